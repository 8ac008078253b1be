"""The pool's gRPC services and ``create_server``: thin adapters over ``Pool``.

All three services (Pool, Tasks, and Blobs in pool/blobservice.py) sit behind one
interceptor (``ErrorInterceptor`` with ``PoolAuthorizer``): by the time a method runs,
``current_caller()`` is an authenticated, authorised node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.grpcutil import POOL_SERVER_OPTIONS, ErrorInterceptor
from hivemind_cluster.model.accounts import REGISTRATION_GRANT, check_account
from hivemind_cluster.model.states import ALL_STATES
from hivemind_cluster.pool import auditing, blobservice, operations
from hivemind_cluster.pool.auth import PoolAuthorizer, acting_for, current_caller
from hivemind_cluster.pool.ledger import Entry
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.taskstore import LogRecord
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

log = logging.getLogger("hivemind.pool")
REGISTER_TIMEOUT = 10.0
Context = grpc.aio.ServicerContext[Any, Any]


class PoolService(pb_grpc.PoolServicer):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.PoolMessage]:
        caller = current_caller()
        try:
            first = await asyncio.wait_for(anext(request_iterator), REGISTER_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidInput("the stream must start with a Register message") from None
        if first.WhichOneof("kind") != "register":
            raise InvalidInput("the stream must start with a Register message")
        session = await self.pool.connect(caller, first.register)

        async def consume() -> None:
            try:
                async for message in request_iterator:
                    if message.WhichOneof("kind") == "heartbeat":
                        await self.pool.handle(session, message)
                    else:  # a state change must complete even if the stream is torn down
                        await asyncio.shield(self.pool.handle(session, message))
            except (asyncio.CancelledError, grpc.RpcError):
                raise
            except Exception:
                log.exception("stream from %s failed", session.node_id)
            finally:
                session.close()

        reader = asyncio.create_task(consume())
        try:
            while (message := await session.outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, Exception):
                await reader
            self.pool.disconnect(session)


class TasksService(pb_grpc.TasksServicer):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.Task:
        record, new = await operations.submit_new(self.pool, current_caller(), request)
        if new:  # a retry with the same idempotency key is the same submission: one entry
            held = f"{record.image}, {record.price_cap} micro-CPT held"
            await auditing.record(
                self.pool.db, context, request.owner, "task.submit", record.id, held
            )
        return await operations.describe(self.pool, record)

    async def Get(self, request: pb.TaskRef, context: Context) -> pb.Task:
        record, attempts = await self.pool.tasks.get_with_attempts(request.task_id)
        operations.check_visible(current_caller(), record, request.owner)
        task = await operations.describe(self.pool, record, attempts)
        task.usage_samples.extend(await self.pool.tasks.usage_samples(record.id))
        return task

    async def List(self, request: pb.ListRequest, context: Context) -> pb.TaskList:
        caller = current_caller()
        unknown = set(request.status) - set(ALL_STATES)
        if unknown:
            raise InvalidInput(f"unknown status {sorted(unknown)[0]!r}")
        owner = request.owner if caller.role == "hub" else caller.node_id
        records = await self.pool.tasks.list_tasks(set(request.status), owner, rows(request.limit))
        return pb.TaskList(tasks=await operations.describe_all(self.pool, records))

    async def Cancel(self, request: pb.TaskRef, context: Context) -> pb.Task:
        caller, task_id = current_caller(), request.task_id
        record = await operations.cancel(self.pool, caller, task_id, request.owner)
        state = f"now {record.status}"
        await auditing.record(self.pool.db, context, request.owner, "task.cancel", record.id, state)
        return await operations.describe(self.pool, record)

    async def StreamLogs(
        self, request: pb.LogsRequest, context: Context
    ) -> AsyncIterator[pb.LogEntry]:
        async for record in operations.logs(
            self.pool,
            current_caller(),
            request.task_id,
            request.follow,
            request.after,
            request.owner,
        ):
            yield log_entry(record)

    async def ReadLogs(self, request: pb.LogsRequest, context: Context) -> pb.LogPage:
        page, done = await operations.log_page(
            self.pool,
            current_caller(),
            request.task_id,
            request.after,
            request.limit,
            request.owner,
        )
        return pb.LogPage(entries=[log_entry(r) for r in page], done=done)

    async def ReadResult(
        self, request: pb.ResultRead, context: Context
    ) -> AsyncIterator[pb.BlobChunk]:
        async for chunk in blobservice.read_result(self.pool, current_caller(), request):
            yield chunk

    async def BeginUpload(self, request: pb.UploadRequest, context: Context) -> pb.UploadState:
        return await blobservice.begin_upload(self.pool, current_caller(), request)

    async def Upload(
        self, request_iterator: AsyncIterator[pb.UploadChunk], context: Context
    ) -> pb.UploadState:
        return await blobservice.upload(self.pool, current_caller(), request_iterator)

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> pb.NodeList:
        return pb.NodeList(nodes=await self.pool.nodes(request.owner))

    async def Balance(self, request: pb.AccountRef, context: Context) -> pb.AccountBalance:
        caller = current_caller()
        account = own_account(request.account)
        ledger = self.pool.ledger
        if account == caller.node_id:
            # Every member starts with its grant. Opening is idempotent (the kind is set only
            # when the account is created, the grant has its own idempotency key), but the
            # kind must be right for whoever comes first: a worker's status page may ask
            # before its stream has connected (where the pool opens it as "worker").
            kind = "worker" if caller.role == "worker" else "user"
            await self.pool.accounting.open(account, kind)
        kind, balance, earned = await ledger.summary(account)
        return pb.AccountBalance(account=account, kind=kind, balance=balance, earned=earned)

    async def OpenAccount(
        self, request: pb.OpenAccountRequest, context: Context
    ) -> pb.AccountBalance:
        """Open an account (with its grant, once) for the hub: the web's new users."""
        if request.kind not in ("user", "project"):
            raise InvalidInput("an opened account is a user or a project")
        account = check_account(request.account)
        await self.pool.accounting.open(account, request.kind)
        kind, balance, earned = await self.pool.ledger.summary(account)
        return pb.AccountBalance(account=account, kind=kind, balance=balance, earned=earned)

    async def History(self, request: pb.HistoryRequest, context: Context) -> pb.LedgerEntries:
        entries = await self.pool.ledger.history(own_account(request.account), rows(request.limit))
        return pb.LedgerEntries(entries=[entry_message(e) for e in entries])

    async def Tip(self, request: pb.TipRequest, context: Context) -> pb.LedgerEntry:
        source = acting_for(current_caller(), request.source, "tip from another account")
        began = time.time()  # a new transfer is stamped after this; a retried one before
        entry = await self.pool.accounting.tip(
            source,
            check_account(request.project),
            request.amount,
            request.idempotency_key[:100],
        )
        if entry.time >= began:  # not a retry with the same idempotency key: one entry
            paid, project = f"{entry.amount} micro-CPT", entry.target
            await auditing.record(
                self.pool.db, context, request.source, "ledger.tip", project, paid
            )
        return entry_message(entry)

    async def GetRateCard(self, request: pb.RateCardRequest, context: Context) -> pb.RateCard:
        return self.pool.rates.to_proto(REGISTRATION_GRANT)


def rows(limit: int) -> int:
    """A list request's ``limit``: 0 means 100."""
    return operations.page_size(limit, 100)


def own_account(account: str) -> str:
    """The caller's own account, or any account for the hub."""
    return check_account(acting_for(current_caller(), account, "look at another account"))


def log_entry(record: LogRecord) -> pb.LogEntry:
    return pb.LogEntry(
        stream=record.stream,
        data=record.data,
        attempt=record.attempt,
        time=record.time,
        id=record.entry_id,
    )


def entry_message(entry: Entry) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        id=entry.id,
        time=entry.time,
        source=entry.source,
        target=entry.target,
        amount=entry.amount,
        reason=entry.reason,
        task=entry.task,
        idempotency_key=entry.key,
    )


async def create_server(
    pool: Pool,
    listen: str,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    extra: Sequence[Callable[[grpc.aio.Server], None]] = (),
) -> tuple[grpc.aio.Server, int]:
    """The pool's server: mutual TLS (client certificates from the hub CA only). ``extra``
    adds other services of the hub behind the same TLS and interceptor (the mesh's peer
    stream, say: the composition root wires it)."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(PoolAuthorizer(pool.db, pool.settings.hub_ip))],
        options=POOL_SERVER_OPTIONS,
    )
    pb_grpc.add_PoolServicer_to_server(PoolService(pool), server)
    pb_grpc.add_TasksServicer_to_server(TasksService(pool), server)
    pb_grpc.add_BlobsServicer_to_server(blobservice.BlobsService(pool), server)
    for add_service in extra:
        add_service(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    credentials = grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )
    port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    for service in ("", "hivemind.pool.Pool", "hivemind.pool.Tasks", "hivemind.pool.Blobs"):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port
