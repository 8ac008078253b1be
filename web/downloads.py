"""A task's result download, shared by the pages and the API: the zip straight from the
hub's blob file (``send_file``: Range requests give 206, so a cut download resumes; a
matching If-None-Match 304), its SHA-256 as the ETag (the quoted hex digits) and in
X-Content-SHA256 (``sha256:HEX``) for the client to verify what it got."""

from __future__ import annotations

from flask import Response, send_file

from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.core.errors import Conflict, NotFound
from hivemind_cluster.core.units import format_duration
from hivemind_cluster.model.blobs import digest_hex
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.web.constants import DIGEST_HEADER
from hivemind_cluster.web.services import services


def result_download(pool: GrpcTaskClient, task_id: str) -> Response:
    """The output of ``task_id`` as its owner's ``pool`` finds it: asked first, so another
    user's task is not found before any file is looked at; 204 when it wrote nothing."""
    task = pool.get(task_id)
    if task["status"] not in FINAL_STATES:
        raise Conflict(f"task {task['id']} is {task['status']}: no result yet")
    digest = str(task.get("output_digest") or "")
    if not digest:
        return Response(status=204)
    blobs = services().blobs
    kept = format_duration(blobs.limits.result_retention_seconds)
    gone = NotFound(
        f"the result of task {task['id']} is no longer on the hub (results are kept "
        f"{kept} after their task ended)"
    )
    try:
        reply = send_file(
            blobs.path(digest),
            mimetype="application/zip",
            as_attachment=True,
            download_name=f"{task['id']}-output.zip",
            conditional=True,
            etag=digest_hex(digest),
        )
    except (NotFound, FileNotFoundError):  # removed, or removed just now
        raise gone from None
    reply.headers[DIGEST_HEADER] = digest
    return reply
