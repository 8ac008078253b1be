"""What the ``hivemind`` and ``hivemind-pool`` commands need from a pool, whatever the wire.

Two implementations: ``client/grpcclient.py`` (gRPC with a node certificate, for
``hivemind-pool``) and ``client/apiclient.py`` (the JSON API with an account token, for
``hivemind``). Both return the dicts of ``client/views.py``, so the commands print the
same thing over either. Data moves as blobs (``client/transfer.py``): each client is an
upload transport (``begin_upload``, ``send_upload``) and a result source (``read_result``),
and the algorithms over them are transfer.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

from hivemind_cluster.client.transfer import ResultStream, UploadState
from hivemind_cluster.client.views import View
from hivemind_cluster.model.blobs import OnBytes

# Seconds a client waits for one answer; for a transfer, for each read or write of the
# connection (the answer to the last piece of an upload waits for the hub to verify it).
CALL_TIMEOUT = 30.0
TRANSFER_TIMEOUT = 300.0


class TaskClient(Protocol):
    def submit(self, body: View) -> View:
        """``body`` is the JSON of ``POST /api/v1/tasks`` (data by digest, uploaded first)."""
        ...

    def get(self, task_id: str) -> View: ...

    def cancel(self, task_id: str) -> View: ...

    def tasks(self, statuses: list[str], limit: int) -> list[View]: ...

    def logs(self, task_id: str, follow: bool) -> Iterator[View]:
        """Log entries (``views.log_view``); with ``follow``, until the task has ended."""
        ...

    def begin_upload(self, digest: str, size: int) -> UploadState:
        """What the hub holds of this blob for the caller: complete, or where to send from."""
        ...

    def send_upload(
        self, upload_id: str, offset: int, source: BinaryIO, length: int, on_bytes: OnBytes
    ) -> UploadState:
        """Up to ``length`` bytes of ``source`` (at ``offset``): the state after."""
        ...

    def read_result(self, task_id: str, offset: int, digest: str) -> ResultStream:
        """The zip of what the task wrote to /out (its ``output_digest``), from ``offset``."""
        ...

    def nodes(self) -> list[View]: ...

    def balance(self, account: str) -> View:
        """``account`` empty: the caller's own."""
        ...

    def history(self, account: str, limit: int) -> list[View]: ...

    def tip(self, project: str, amount_micro: int) -> View: ...

    def rates(self) -> View: ...
