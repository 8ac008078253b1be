"""What the ``hivemind`` and ``hivemind-pool`` commands need from a pool, whatever the wire.

Two implementations: ``client/grpcclient.py`` (gRPC with a node certificate, for
``hivemind-pool``) and ``client/apiclient.py`` (the JSON API with an account token, for
``hivemind``). Both return the dicts of ``client/views.py``, so the commands print the
same thing over either.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from hivemind_cluster.client.views import View

# Seconds a client waits for one answer (a result download may be large).
CALL_TIMEOUT = 30.0
RESULT_TIMEOUT = 120.0


class TaskClient(Protocol):
    def submit(self, body: View) -> View:
        """``body`` is the JSON of ``POST /api/v1/tasks`` (bundle in base64)."""
        ...

    def get(self, task_id: str) -> View: ...

    def cancel(self, task_id: str) -> View: ...

    def tasks(self, statuses: list[str], limit: int) -> list[View]: ...

    def logs(self, task_id: str, follow: bool) -> Iterator[View]:
        """Log entries (``views.log_view``); with ``follow``, until the task has ended."""
        ...

    def result(self, task_id: str) -> bytes:
        """The zip of what the task wrote to /out (empty: no output)."""
        ...

    def nodes(self) -> list[View]: ...

    def balance(self, account: str) -> View:
        """``account`` empty: the caller's own."""
        ...

    def history(self, account: str, limit: int) -> list[View]: ...

    def tip(self, project: str, amount_micro: int) -> View: ...

    def rates(self) -> View: ...
