"""File downloads shared by the pages and the API."""

from __future__ import annotations

from flask import Response


def zip_download(task_id: str, bundle: bytes) -> Response:
    """A task's output zip as a file download (``task_id`` is one the pool has found)."""
    return Response(
        bundle,
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{task_id}-output.zip"'},
    )
