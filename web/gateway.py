"""The web's way into the pool: gRPC with the hub's own certificate, on behalf of a user.

Only the hub may act for other accounts (submit with ``owner``, look at any balance, tip
from any ``source``), so every call here names the user's account, and tasks of other
users are reported as not found, exactly as the pool does for operator nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from hivemind_cluster.mesh.errors import InvalidInput, NotFound
from hivemind_cluster.mesh.grpcutil import error_from_rpc
from hivemind_cluster.pool import views
from hivemind_cluster.pool.client import Identity, sync_channel
from hivemind_cluster.pool.constants import FINAL_STATES
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

T = TypeVar("T")
View = views.View
CALL_TIMEOUT = 30.0


class Gateway(Protocol):
    """What the web needs from the pool (the real one is ``PoolGateway``)."""

    def submit(self, account: str, request: pb.SubmitRequest) -> View: ...
    def task(self, account: str, task_id: str) -> View: ...
    def tasks(self, account: str, statuses: list[str], limit: int) -> list[View]: ...
    def cancel(self, account: str, task_id: str) -> View: ...
    def logs(self, account: str, task_id: str) -> list[View]: ...
    def result(self, account: str, task_id: str) -> bytes: ...
    def nodes(self) -> list[View]: ...
    def balance(self, account: str) -> View: ...
    def history(self, account: str, limit: int) -> list[View]: ...
    def tip(self, account: str, project: str, amount: int) -> View: ...
    def rates(self) -> pb.RateCard: ...


class PoolGateway:
    def __init__(self, identity: Identity, address: str | None = None) -> None:
        self.channel = sync_channel(identity, address)
        self.stub = pb_grpc.TasksStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, what: str, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, what) from None

    def _own_task(self, account: str, task_id: str) -> pb.Task:
        if not task_id or len(task_id) > 64:
            raise InvalidInput("a task id is required")
        task = self._call("task", self.stub.Get, pb.TaskRef(task_id=task_id))
        if task.owner != account:
            raise NotFound(f"no task {task_id}")
        return task

    def submit(self, account: str, request: pb.SubmitRequest) -> View:
        request.owner = account
        return views.task_view(self._call("submit", self.stub.Submit, request))

    def task(self, account: str, task_id: str) -> View:
        return views.task_view(self._own_task(account, task_id))

    def tasks(self, account: str, statuses: list[str], limit: int) -> list[View]:
        query = pb.ListRequest(status=statuses, limit=limit, owner=account)
        return [views.task_view(t) for t in self._call("list", self.stub.List, query).tasks]

    def cancel(self, account: str, task_id: str) -> View:
        self._own_task(account, task_id)
        return views.task_view(self._call("cancel", self.stub.Cancel, pb.TaskRef(task_id=task_id)))

    def logs(self, account: str, task_id: str) -> list[View]:
        """Every log entry so far (the pool caps them per attempt)."""
        self._own_task(account, task_id)
        request = pb.LogsRequest(task_id=task_id, follow=False)
        try:
            entries = list(self.stub.StreamLogs(request, timeout=CALL_TIMEOUT))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "logs") from None
        return [
            {
                "stream": e.stream,
                "attempt": e.attempt,
                "time": e.time,
                "data": e.data.decode(errors="replace"),
            }
            for e in entries
        ]

    def result(self, account: str, task_id: str) -> bytes:
        task = self._own_task(account, task_id)
        if task.status not in FINAL_STATES:
            raise InvalidInput(f"task {task_id} is {task.status}: no result yet")
        bundle = self._call("result", self.stub.FetchResult, pb.TaskRef(task_id=task_id))
        return bundle.output_bundle

    def nodes(self) -> list[View]:
        found = self._call("nodes", self.stub.ListNodes, pb.ListNodesRequest())
        return [views.node_view(n) for n in found.nodes]

    def balance(self, account: str) -> View:
        found = self._call("balance", self.stub.Balance, pb.AccountRef(account=account))
        return views.balance_view(found)

    def history(self, account: str, limit: int) -> list[View]:
        query = pb.HistoryRequest(account=account, limit=limit)
        entries = self._call("history", self.stub.History, query).entries
        return [views.entry_view(e) for e in entries]

    def tip(self, account: str, project: str, amount: int) -> View:
        request = pb.TipRequest(project=project, amount=amount, source=account)
        return views.entry_view(self._call("tip", self.stub.Tip, request))

    def rates(self) -> pb.RateCard:
        return self._call("rates", self.stub.GetRateCard, pb.RateCardRequest())
