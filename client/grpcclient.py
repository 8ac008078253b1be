"""``TaskClient`` over the pool's gRPC API with a node certificate.

``hivemind-pool`` uses it as the node itself. With ``account``, it acts on behalf of that
ledger account, which only the hub's certificate may do (the web API, for its users):
tasks are submitted, listed and paid for as the account, and a task of anyone else is
reported as not found, as the pool does for operator nodes.

Blobs: uploads are ``Tasks.BeginUpload`` and one client stream ``Tasks.Upload`` for the
rest of the file, in CHUNK_BYTES messages; a result is the stream ``Tasks.ReadResult``.
Neither has a deadline (they last as long as the data takes); keepalives notice a peer
that went away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import grpc

from hivemind_cluster.client import views
from hivemind_cluster.client.taskclient import CALL_TIMEOUT
from hivemind_cluster.client.transfer import ResultStream, UploadState
from hivemind_cluster.client.views import View
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.grpcutil import error_from_rpc
from hivemind_cluster.model.blobs import CHUNK_BYTES, OnBytes
from hivemind_cluster.model.submission import from_json
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

T = TypeVar("T")
# The address the hub's web was called from (its user's browser), sent along with the web's
# calls so the pool's audit log names it; the pool believes it of the hub's certificate only.
SOURCE_ADDRESS_METADATA = "hivemind-source-address"


class GrpcTaskClient:
    def __init__(self, channel: grpc.Channel, account: str = "") -> None:
        self.stub = pb_grpc.TasksStub(channel)
        self.account = account
        self.metadata: tuple[tuple[str, str], ...] = ()

    def from_address(self, address: str) -> GrpcTaskClient:
        """This client, telling the pool that its user calls from ``address``."""
        self.metadata = ((SOURCE_ADDRESS_METADATA, address),)
        return self

    def _call(
        self,
        what: str,
        method: Callable[..., T],
        request: Any,
        timeout: float | None = CALL_TIMEOUT,
    ) -> T:
        try:
            return method(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, what) from None

    def _ref(self, task_id: str) -> pb.TaskRef:
        """A task of the account's (the pool finds no other), or any visible one without."""
        return pb.TaskRef(task_id=task_id, owner=self.account)

    def submit(self, body: View) -> View:
        # The API's own reading of a body, so both CLIs accept exactly the same submissions.
        return self.submit_request(from_json(body))

    def submit_request(self, request: pb.SubmitRequest) -> View:
        request.owner = self.account
        return views.task_view(self._call("submit", self.stub.Submit, request))

    def get(self, task_id: str) -> View:
        return views.task_view(self._call("task", self.stub.Get, self._ref(task_id)))

    def cancel(self, task_id: str) -> View:
        return views.task_view(self._call("cancel", self.stub.Cancel, self._ref(task_id)))

    def tasks(self, statuses: list[str], limit: int) -> list[View]:
        query = pb.ListRequest(status=statuses, limit=limit, owner=self.account)
        return [views.task_view(t) for t in self._call("list", self.stub.List, query).tasks]

    def logs(self, task_id: str, follow: bool) -> Iterator[View]:
        """Every entry (with ``follow``, until the task has ended); stop reading early and
        the call is cancelled."""
        request = pb.LogsRequest(task_id=task_id, follow=follow, owner=self.account)
        call = self.stub.StreamLogs(request, timeout=None if follow else CALL_TIMEOUT)
        try:
            for entry in call:
                yield views.log_view(entry)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "logs") from None
        finally:
            call.cancel()

    def log_page(self, task_id: str, after: str, limit: int) -> tuple[list[View], bool]:
        """Up to ``limit`` entries after ``after`` in one call, and whether the log has ended."""
        request = pb.LogsRequest(task_id=task_id, after=after, limit=limit, owner=self.account)
        page = self._call("logs", self.stub.ReadLogs, request)
        return [views.log_view(e) for e in page.entries], page.done

    # Blobs (client/transfer.py runs the algorithms)

    def begin_upload(self, digest: str, size: int) -> UploadState:
        request = pb.UploadRequest(digest=digest, size=size, account=self.account)
        return state_of(self._call("upload", self.stub.BeginUpload, request))

    def send_upload(
        self, upload_id: str, offset: int, source: BinaryIO, length: int, on_bytes: OnBytes
    ) -> UploadState:
        """All ``length`` bytes in one stream of CHUNK_BYTES messages, read as they go."""
        chunks = UploadChunks(upload_id, offset, self.account, source, length)
        try:
            state = self._call("upload", self.stub.Upload, chunks.messages(on_bytes), None)
        finally:
            if chunks.error is not None:
                raise chunks.error
        return state_of(state)

    def read_result(self, task_id: str, offset: int, digest: str) -> ResultStream:
        """From ``offset``: the pool's blob of a task is the one its ``output_digest`` names."""
        request = pb.ResultRead(task_id=task_id, owner=self.account, offset=offset)
        return ResultStream(offset, self._result_chunks(request))

    def _result_chunks(self, request: pb.ResultRead) -> Iterator[bytes]:
        call = self.stub.ReadResult(request, timeout=None)
        try:
            for chunk in call:
                yield chunk.data
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "result") from None
        finally:
            call.cancel()

    def nodes(self) -> list[View]:
        found = self._call("nodes", self.stub.ListNodes, pb.ListNodesRequest(owner=self.account))
        return [views.node_view(n) for n in found.nodes]

    def balance(self, account: str) -> View:
        ref = pb.AccountRef(account=account or self.account)
        return views.balance_view(self._call("balance", self.stub.Balance, ref))

    def open_account(self, account: str, kind: str = "user") -> View:
        request = pb.OpenAccountRequest(account=account, kind=kind)
        return views.balance_view(self._call("open account", self.stub.OpenAccount, request))

    def history(self, account: str, limit: int) -> list[View]:
        query = pb.HistoryRequest(account=account or self.account, limit=limit)
        found = self._call("history", self.stub.History, query)
        return [views.entry_view(e) for e in found.entries]

    def tip(self, project: str, amount_micro: int) -> View:
        request = pb.TipRequest(project=project, amount=amount_micro, source=self.account)
        return views.entry_view(self._call("tip", self.stub.Tip, request))

    def rates(self) -> View:
        return views.rates_view(self._call("rates", self.stub.GetRateCard, pb.RateCardRequest()))


def state_of(state: pb.UploadState) -> UploadState:
    return UploadState(
        upload_id=state.upload_id,
        offset=state.offset,
        size=state.size,
        digest=state.digest,
        complete=state.complete,
    )


class UploadChunks:
    """The messages of ``Tasks.Upload``: the first names the upload and its offset. A file
    that ends early ends the stream and is the error (gRPC would only log it)."""

    def __init__(
        self, upload_id: str, offset: int, account: str, source: BinaryIO, length: int
    ) -> None:
        self.head = pb.UploadChunk(upload_id=upload_id, offset=offset, account=account)
        self.source, self.length = source, length
        self.error: InvalidInput | None = None

    def messages(self, on_bytes: OnBytes) -> Iterator[pb.UploadChunk]:
        left, first = self.length, True
        while left:
            data = self.source.read(min(CHUNK_BYTES, left))
            if not data:
                self.error = InvalidInput("the file got shorter while it was being sent")
                return
            left -= len(data)
            on_bytes(len(data))
            if first:
                self.head.data = data
                yield self.head
                first = False
            else:
                yield pb.UploadChunk(data=data)
