"""Blobs over gRPC: workers read their attempts' inputs and write their results
(``service Blobs``), operators and the hub upload inputs and read results (``Tasks``).

Data moves in chunks of CHUNK_BYTES (model/blobs.py), through the hub's blob store, whose
calls block (files, a synchronous Redis) and so run on its few threads
(``taskdata.in_store_thread``). Memory does not grow with a blob's size: a read holds one
chunk, a write gathers at most WRITE_BYTES before the store appends them. Every worker call
is fenced to the caller's current attempt of the task, as its results are
(pool/redis_functions.lua ``fenced``), and a read again every FENCE_CHUNKS chunks: a
superseded or cancelled attempt can neither read its inputs any more nor write a result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hivemind_cluster.blobs.store import BlobStore, UploadState
from hivemind_cluster.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from hivemind_cluster.model.blobs import CHUNK_BYTES, check_digest
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.pool import operations
from hivemind_cluster.pool.auth import Caller, acting_for, current_caller
from hivemind_cluster.pool.metrics import TASK_DATA_BYTES
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.pool.taskdata import in_store_thread
from hivemind_cluster.pool.taskstore import check_task_id
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# Gathered from a stream before one append to the store: small, so that many uploads at
# once keep the hub within its memory (150 MB), large enough that an append is not a
# round trip per chunk.
WRITE_BYTES = 2 * CHUNK_BYTES
FENCE_CHUNKS = 64  # a read checks again every this many chunks that its attempt is current
SERVED = TASK_DATA_BYTES.labels("served")  # inputs to workers
RECEIVED = TASK_DATA_BYTES.labels("received")  # results from workers
# Appends ``chunks`` at ``offset`` (a store call, in a thread); the state after them.
Append = Callable[[int, list[bytes]], Awaitable[UploadState]]


async def stream_blob(blobs: BlobStore, digest: str, offset: int) -> AsyncIterator[pb.BlobChunk]:
    """The blob from ``offset`` to its end, one chunk at a time, each read in a thread."""
    chunks = await in_store_thread(blobs.read, digest, offset)
    while (chunk := await in_store_thread(next, chunks, None)) is not None:
        yield pb.BlobChunk(data=chunk)


async def append_stream(
    offset: int, data: bytes, rest: AsyncIterator[Any], append: Append
) -> UploadState | None:
    """Append a stream's data to the store: ``data`` (the first message's) at ``offset``,
    then each later message's, WRITE_BYTES at a time. A later message either says where its
    data starts (it must be where the previous one ended) or leaves its offset 0. None:
    the stream carried no data at all."""
    state = None
    batch, gathered, position = [data] if data else [], len(data), offset + len(data)
    async for message in rest:
        if message.offset not in (0, position):
            raise InvalidInput(f"data at offset {message.offset}, expected {position}")
        if message.data:
            batch.append(message.data)
            gathered += len(message.data)
            position += len(message.data)
        if gathered >= WRITE_BYTES:
            state = await append(offset, batch)
            batch, offset, gathered = [], position, 0
    if batch:
        state = await append(offset, batch)
    return state


async def first_message(stream: AsyncIterator[Any], what: str) -> Any:
    message = await anext(stream, None)
    if message is None:
        raise InvalidInput(f"the stream must start with a message naming the {what}")
    return message


async def current_attempt(pool: Pool, caller: Caller, task_id: str, attempt: int) -> TaskRecord:
    """The task, if ``attempt`` is its current attempt, on the caller's node."""
    record = await pool.tasks.get(check_task_id(task_id))
    if not record.runs(attempt, caller.node_id):
        raise PermissionDenied(
            f"attempt {attempt} of task {task_id} is not running on {caller.node_id} "
            f"(task is {record.status}, attempt {record.attempt})"
        )
    return record


class BlobsService(pb_grpc.BlobsServicer):
    """For workers: their attempts' inputs, and their results."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def Read(self, request: pb.BlobRead, context: Context) -> AsyncIterator[pb.BlobChunk]:
        caller = current_caller()
        record = await current_attempt(self.pool, caller, request.task_id, request.attempt)
        digest = check_digest(request.digest)
        if digest not in record.held_digests():
            raise NotFound(f"{digest} is not an input of task {record.id}")
        sent = 0
        async for chunk in stream_blob(self.pool.blobs, digest, request.offset):
            sent += 1
            if sent % FENCE_CHUNKS == 0:  # superseded or cancelled meanwhile: PermissionDenied
                await current_attempt(self.pool, caller, request.task_id, request.attempt)
            SERVED.inc(len(chunk.data))
            yield chunk

    async def ResultOffset(self, request: pb.ResultChunk, context: Context) -> pb.UploadState:
        return (await self._begin_result(current_caller(), request)).message()

    async def WriteResult(
        self, request_iterator: AsyncIterator[pb.ResultChunk], context: Context
    ) -> pb.UploadState:
        caller = current_caller()
        first = await first_message(request_iterator, "result (task, attempt, digest, size)")
        begun = await self._begin_result(caller, first)
        task_id, attempt = first.task_id, first.attempt

        async def append(offset: int, chunks: list[bytes]) -> UploadState:
            await current_attempt(self.pool, caller, task_id, attempt)  # still current?
            state = await in_store_thread(
                self.pool.blobs.append_result, task_id, attempt, offset, chunks
            )
            RECEIVED.inc(sum(map(len, chunks)))
            return state

        written = await append_stream(first.offset, first.data, request_iterator, append)
        return (written or begun).message()

    async def _begin_result(self, caller: Caller, header: pb.ResultChunk) -> UploadState:
        """The caller's current attempt's result upload (the same one again: its offset)."""
        await current_attempt(self.pool, caller, header.task_id, header.attempt)
        digest = check_digest(header.digest, "result digest")
        return await in_store_thread(
            self.pool.blobs.begin_result, header.task_id, header.attempt, digest, header.size
        )


# ---- the Tasks service's blob calls (pool/service.py delegates) ---------------------------


async def read_result(
    pool: Pool, caller: Caller, request: pb.ResultRead
) -> AsyncIterator[pb.BlobChunk]:
    """The ended task's result zip from ``offset`` (nothing when it wrote none)."""
    record = await operations.visible_task(pool, caller, request.task_id, request.owner)
    if record.status not in FINAL_STATES:
        raise Conflict(f"task {record.id} is {record.status}: no result yet")
    if record.output:
        async for chunk in stream_blob(pool.blobs, record.output, request.offset):
            yield chunk


async def begin_upload(pool: Pool, caller: Caller, request: pb.UploadRequest) -> pb.UploadState:
    """What the hub holds of the blob for the account, and where to send from."""
    account = acting_for(caller, request.account, "upload for another account")
    digest = check_digest(request.digest)
    state = await in_store_thread(pool.blobs.begin_upload, account, request.size, digest)
    return state.message()


async def upload(
    pool: Pool, caller: Caller, stream: AsyncIterator[pb.UploadChunk]
) -> pb.UploadState:
    """Append a stream of chunks to an open upload of the account's."""
    first = await first_message(stream, "upload (upload_id, offset)")
    account = acting_for(caller, first.account, "upload for another account")
    upload_id = first.upload_id

    async def append(offset: int, chunks: list[bytes]) -> UploadState:
        return await in_store_thread(pool.blobs.append, account, upload_id, offset, chunks)

    written = await append_stream(first.offset, first.data, stream, append)
    if written is None:  # nothing sent: where it is (one holding every byte gets committed)
        written = await in_store_thread(pool.blobs.upload_state, account, upload_id)
    return written.message()
