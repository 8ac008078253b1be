"""Task data through the pool: inputs uploaded and pinned at submission, read by the worker
of the current attempt only, results written (resumably) and read back, released when the
task ends. Real Redis, real mTLS gRPC on loopback, the real blob store under the state dir;
the workers here are bare streams, so the test sees every Assign and sends every message.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from hivemind_cluster.client.channel import aio_channel
from hivemind_cluster.core.errors import NotFound
from hivemind_cluster.core.names import HUB_NODE_ID
from hivemind_cluster.model.blobs import CHUNK_BYTES, DIR
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.pool import blobservice
from hivemind_cluster.pool.taskstore import tasks_live
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import Cluster, GiB, collected, digest_of, in_a_cluster, upload
from tests.support.scratch import zip_of

pytestmark = pytest.mark.privileged
MIB = 1 << 20
BUSYBOX = "hivemind/busybox:latest"


def submit(**fields: Any) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        image=BUSYBOX,
        command=["true"],
        resources=pb.Resources(cpu_millis=1000, memory_bytes=256 * MIB),
        **fields,
    )


def a_file(name: str, digest: str, kind: str = "file") -> pb.InputRef:
    return pb.InputRef(name=name, digest=digest, kind=kind)


@dataclass
class BareWorker:
    """A worker that is only its stream and its Blobs stub."""

    node_id: str
    call: Any  # the Connect call
    blobs: pb_grpc.BlobsAsyncStub

    async def next_assign(self) -> pb.Assign:
        while True:
            message = await self.call.read()
            assert isinstance(message, pb.PoolMessage), message
            if message.WhichOneof("kind") == "assign":
                return message.assign

    async def report(self, result: pb.TaskResult) -> pb.PoolMessage:
        """Send a result; the pool's answer to it (accepted or rejected)."""
        await self.call.write(pb.AgentMessage(result=result))
        while True:
            reply = await self.call.read()
            assert isinstance(reply, pb.PoolMessage), reply
            if reply.WhichOneof("kind") in ("accepted", "rejected"):
                return reply


@contextlib.asynccontextmanager
async def bare_worker(cluster: Cluster, node_id: str) -> AsyncIterator[BareWorker]:
    identity = await cluster.add_node(node_id, "worker")
    async with aio_channel(identity) as channel:
        call = pb_grpc.PoolStub(channel).Connect()
        capacity = pb.Resources(cpu_millis=2000, memory_bytes=4 * GiB)
        await call.write(pb.AgentMessage(register=pb.Register(capacity=capacity)))
        await call.read()  # registered
        await cluster.until(lambda: node_id in cluster.sessions(), f"{node_id} connected")
        try:
            yield BareWorker(node_id, call, pb_grpc.BlobsStub(channel))
        finally:
            call.cancel()


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error ``call`` (a unary call, or a stream read to its end) fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        if hasattr(call, "__aiter__"):
            await collected(call)
        else:
            await call
    return failed.value


def read(worker: BareWorker, assign: pb.Assign, digest: str, offset: int = 0) -> Any:
    request = pb.BlobRead(
        digest=digest, offset=offset, task_id=assign.task_id, attempt=assign.attempt
    )
    return worker.blobs.Read(request)


def chunks_of(
    assign: pb.Assign, data: bytes, offset: int, until: int | None = None
) -> Iterator[pb.ResultChunk]:
    """The result ``data`` from ``offset`` (to ``until``) as WriteResult messages."""
    end = len(data) if until is None else until
    for start in range(offset, end, CHUNK_BYTES):
        piece = data[start : min(start + CHUNK_BYTES, end)]
        message = pb.ResultChunk(offset=start, data=piece)
        if start == offset:  # the first names the result
            message.task_id, message.attempt = assign.task_id, assign.attempt
            message.digest, message.size = digest_of(data), len(data)
        yield message


async def stream_of(messages: Iterator[pb.ResultChunk]) -> AsyncIterator[pb.ResultChunk]:
    for message in messages:
        yield message


def result_of(assign: pb.Assign, data: bytes) -> pb.TaskResult:
    return pb.TaskResult(
        task_id=assign.task_id,
        attempt=assign.attempt,
        status="succeeded",
        output_digest=digest_of(data),
        output_size=len(data),
    )


async def write_result(worker: BareWorker, assign: pb.Assign, data: bytes) -> pb.UploadState:
    state = await worker.blobs.WriteResult(stream_of(chunks_of(assign, data, 0)))
    assert state.complete, state
    return state


@in_a_cluster()
async def test_a_submission_names_held_data_and_the_assign_carries_it_with_sizes(
    cluster: Cluster,
) -> None:
    stub = await cluster.operator_stub()
    bundle = zip_of({"main.py": "print('hi')\n", "task.json": '{"timeout": 77}'})
    data = secrets.token_bytes(2 * CHUNK_BYTES + 5)
    directory = zip_of({"a.txt": "a", "b/c.txt": "c"})
    digests = [await upload(stub, blob) for blob in (bundle, data, directory)]
    assert await upload(stub, data) == digests[1]  # held already: nothing is sent again
    async with bare_worker(cluster, "w1") as worker:
        task = await stub.Submit(
            pb.SubmitRequest(
                bundle_digest=digests[0],
                inputs=[a_file("data.bin", digests[1]), a_file("tree", digests[2], DIR)],
            )
        )
        assert task.timeout_seconds == 77 and task.command[-1] == "/work/main.py"  # the bundle's
        assign = await worker.next_assign()
    assert (assign.bundle.digest, assign.bundle.size) == (digests[0], len(bundle))
    assert [(i.name, i.digest, i.size, i.kind) for i in assign.inputs] == [
        ("data.bin", digests[1], len(data), "file"),
        ("tree", digests[2], len(directory), "dir"),
    ]
    shown = await stub.Get(pb.TaskRef(task_id=task.id))
    assert shown.bundle == assign.bundle and list(shown.inputs) == list(assign.inputs)


@in_a_cluster()
async def test_data_the_owner_does_not_hold_is_refused_and_nothing_is_queued_or_paid(
    cluster: Cluster,
) -> None:
    alice, bob = await cluster.operator_stub("alice"), await cluster.operator_stub("bob")
    before = (await alice.Balance(pb.AccountRef())).balance
    bobs = await upload(bob, b"bob's data")  # on the hub, but alice never sent the bytes
    for request in (
        submit(bundle_digest=digest_of(b"never uploaded")),
        submit(inputs=[a_file("x", bobs)]),
    ):
        failed = await refused(alice.Submit(request))
        assert failed.code() == grpc.StatusCode.NOT_FOUND, failed
        assert "upload it first" in (failed.details() or "")
    assert (await alice.List(pb.ListRequest())).tasks == []
    assert (await alice.Balance(pb.AccountRef())).balance == before
    assert cluster.pool is not None and not cluster.pool.scheduler.pending


def a_url_input() -> pb.InputRef:
    return pb.InputRef(name="x.csv", url="https://data.example.org/x.csv", digest=digest_of(b"csv"))


@in_a_cluster()
async def test_url_inputs_are_refused_unless_the_hub_allows_their_prefix(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    failed = await refused(stub.Submit(submit(inputs=[a_url_input()])))
    assert failed.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "input_url_prefixes" in (failed.details() or "")


@in_a_cluster(input_url_prefixes="https://mirror.example.net/,https://data.example.org/")
async def test_an_allowed_url_input_reaches_the_worker_as_its_url(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    async with bare_worker(cluster, "w1") as worker:
        await stub.Submit(submit(inputs=[a_url_input()]))
        assign = await worker.next_assign()
    (ref,) = assign.inputs
    assert (ref.url, ref.digest, ref.size) == (a_url_input().url, digest_of(b"csv"), 0)
    elsewhere = pb.InputRef(name="y", url="https://other.example.com/y", digest=ref.digest)
    assert (await refused(stub.Submit(submit(inputs=[elsewhere])))).code().name == (
        "PERMISSION_DENIED"
    )


@in_a_cluster()
async def test_a_disk_too_small_for_what_unpacks_onto_it_is_refused_at_submission(
    cluster: Cluster,
) -> None:
    stub = await cluster.operator_stub()
    bundle = await upload(stub, zip_of({"main.py": b"#" * (10 * MIB)}))  # stored: 10 MiB
    tree = await upload(stub, zip_of({"big.bin": b"\0" * (10 * MIB)}))
    disk = 16 * MIB  # holds either one, not both
    assert (await stub.Submit(submit(bundle_digest=bundle, disk_bytes=disk))).id
    failed = await refused(
        stub.Submit(submit(bundle_digest=bundle, inputs=[a_file("t", tree, DIR)], disk_bytes=disk))
    )
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unpack to 20 MiB, more than the task's disk of 16 MiB" in (failed.details() or "")
    assert len((await stub.List(pb.ListRequest())).tasks) == 1


@in_a_cluster()
async def test_a_dir_input_that_is_not_a_zip_is_refused_by_its_name(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    tree = await upload(stub, b"not a zip at all")
    failed = await refused(stub.Submit(submit(inputs=[a_file("tree", tree, DIR)])))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dir input 'tree' is not a zip file" in (failed.details() or "")


@in_a_cluster()
async def test_only_the_current_attempts_worker_reads_only_its_inputs(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    data = secrets.token_bytes(3 * CHUNK_BYTES + 123)
    digest, other = await upload(stub, data), await upload(stub, b"not this task's")
    async with bare_worker(cluster, "w1") as worker, bare_worker(cluster, "w2") as stranger:
        await stub.Submit(submit(inputs=[a_file("data.bin", digest)]))
        assign = await worker.next_assign()
        assert await collected(read(worker, assign, digest)) == data
        offset = CHUNK_BYTES + 7
        chunks = [c.data async for c in read(worker, assign, digest, offset)]
        assert b"".join(chunks) == data[offset:] and max(map(len, chunks)) <= CHUNK_BYTES
        assert (await refused(read(stranger, assign, digest))).code().name == ("PERMISSION_DENIED")
        stale = pb.Assign(task_id=assign.task_id, attempt=assign.attempt + 1)
        assert (await refused(read(worker, stale, digest))).code().name == "PERMISSION_DENIED"
        assert (await refused(read(worker, assign, other))).code().name == "NOT_FOUND"
        await stub.Cancel(pb.TaskRef(task_id=assign.task_id))
        ended = await worker.report(
            pb.TaskResult(task_id=assign.task_id, attempt=assign.attempt, status="cancelled")
        )
        assert ended.WhichOneof("kind") == "accepted"
        # Ended: its worker may not read its inputs any more.
        assert (await refused(read(worker, assign, digest))).code().name == "PERMISSION_DENIED"


@in_a_cluster()
async def test_a_read_under_way_ends_when_its_attempt_is_cancelled(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    data = secrets.token_bytes(32 * CHUNK_BYTES)  # more than the stream buffers ahead
    digest = await upload(stub, data)
    every = blobservice.FENCE_CHUNKS
    blobservice.FENCE_CHUNKS = 2  # checks again every other chunk
    try:
        async with bare_worker(cluster, "w1") as worker:
            await stub.Submit(submit(inputs=[a_file("data.bin", digest)]))
            assign = await worker.next_assign()
            reading = read(worker, assign, digest)
            first = await reading.read()
            assert first.data == data[:CHUNK_BYTES]
            await stub.Cancel(pb.TaskRef(task_id=assign.task_id))
            ended = await worker.report(
                pb.TaskResult(task_id=assign.task_id, attempt=assign.attempt, status="cancelled")
            )
            assert ended.WhichOneof("kind") == "accepted"
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                while await reading.read() is not grpc.aio.EOF:
                    pass
            assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        blobservice.FENCE_CHUNKS = every


@in_a_cluster()
async def test_a_result_written_in_two_goes_is_read_back_whole(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    data = zip_of({"out/result.bin": secrets.token_bytes(3 * CHUNK_BYTES)})
    async with bare_worker(cluster, "w1") as worker:
        task = await stub.Submit(submit())
        assign = await worker.next_assign()
        header = next(chunks_of(assign, data, 0))
        header.ClearField("data")
        assert (await worker.blobs.ResultOffset(header)).offset == 0
        half = 2 * CHUNK_BYTES
        partly = await worker.blobs.WriteResult(stream_of(chunks_of(assign, data, 0, half)))
        assert (partly.offset, partly.complete) == (half, False)  # the stream broke there
        resumed = await worker.blobs.ResultOffset(header)
        assert resumed.offset == half and resumed.upload_id == partly.upload_id
        rest = await worker.blobs.WriteResult(stream_of(chunks_of(assign, data, half)))
        assert rest.complete and rest.digest == digest_of(data)
        assert (await worker.report(result_of(assign, data))).WhichOneof("kind") == "accepted"
    done = await cluster.wait_status(stub, task.id, {"succeeded"})
    assert (done.output_digest, done.output_bytes) == (digest_of(data), len(data))
    back = await collected(stub.ReadResult(pb.ResultRead(task_id=task.id)))
    assert digest_of(back) == done.output_digest
    tail = await collected(stub.ReadResult(pb.ResultRead(task_id=task.id, offset=len(data) - 9)))
    assert tail == data[-9:]


@in_a_cluster(max_result_bytes=4 * MIB)
async def test_results_that_are_not_written_too_large_or_not_sound_are_refused(
    cluster: Cluster,
) -> None:
    stub = await cluster.operator_stub()
    async with bare_worker(cluster, "w1") as worker:
        task = await stub.Submit(submit())
        assign = await worker.next_assign()
        never_written = result_of(assign, zip_of({"x": "y"}))
        reply = await worker.report(never_written)
        assert reply.WhichOneof("kind") == "rejected" and not reply.rejected.superseded
        assert "send it with Blobs.WriteResult first" in reply.rejected.reason
        not_this = pb.Assign(task_id=assign.task_id, attempt=assign.attempt + 1)
        reply = await worker.report(result_of(not_this, zip_of({"x": "y"})))
        assert reply.rejected.superseded  # fenced before anything is looked at
        huge = pb.ResultChunk(
            task_id=assign.task_id, attempt=assign.attempt, digest=digest_of(b"h"), size=5 * MIB
        )
        assert (await refused(worker.blobs.ResultOffset(huge))).code().name == ("INVALID_ARGUMENT")
        not_a_zip = b"this is not a zip file at all"
        await write_result(worker, assign, not_a_zip)
        reply = await worker.report(result_of(assign, not_a_zip))
        assert reply.WhichOneof("kind") == "rejected" and "zip" in reply.rejected.reason
        escaping = zip_of({"../../etc/evil": "x"})
        # One result per attempt: another one after it is refused (the disk's sake).
        again = await refused(worker.blobs.WriteResult(stream_of(chunks_of(assign, escaping, 0))))
        assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "an attempt writes one result" in (again.details() or "")
        await stub.Submit(submit())
        second = await worker.next_assign()
        await write_result(worker, second, escaping)
        assert (await worker.report(result_of(second, escaping))).WhichOneof("kind") == "rejected"
        assert (await stub.Get(pb.TaskRef(task_id=task.id))).status == "assigned"
        # Another node may not write this attempt's result.
        async with bare_worker(cluster, "w2") as stranger:
            stray = stranger.blobs.WriteResult(stream_of(chunks_of(second, escaping, 0)))
            assert (await refused(stray)).code().name == "PERMISSION_DENIED"


RETENTION = 3600  # an upload is kept this long past its last use (the least a hub may set)


def collect_later(cluster: Cluster) -> tuple[int, int]:
    """The blob store's garbage collection as the hub runs it, twice RETENTION from now."""
    assert cluster.pool is not None
    blobs = cluster.pool.blobs
    now = blobs.clock
    blobs.clock = lambda: now() + 2 * RETENTION
    try:
        return blobs.collect_garbage(lambda task_ids: tasks_live(cluster.blob_db, task_ids))
    finally:
        blobs.clock = now


@in_a_cluster(upload_retention_seconds=RETENTION)
async def test_an_ended_tasks_inputs_are_released_and_collected_its_result_kept(
    cluster: Cluster,
) -> None:
    assert cluster.pool is not None
    blobs = cluster.pool.blobs
    stub = await cluster.operator_stub()
    data = secrets.token_bytes(1000)
    digest = await upload(stub, data)
    result = zip_of({"out/r.txt": "done"})

    async with bare_worker(cluster, "w1") as worker:
        task = await stub.Submit(submit(inputs=[a_file("d", digest)]))
        assign = await worker.next_assign()
        assert collect_later(cluster) == (0, 0)  # pinned by a task that has not ended
        assert blobs.path(digest).exists()
        await write_result(worker, assign, result)
        assert (await worker.report(result_of(assign, result))).WhichOneof("kind") == "accepted"
    await cluster.wait_settled(stub, task.id)
    record = await cluster.pool.tasks.get(task.id)
    assert record.status in FINAL_STATES and record.released
    assert collect_later(cluster) == (1, len(data))
    with pytest.raises(NotFound):
        blobs.path(digest)
    assert await collected(stub.ReadResult(pb.ResultRead(task_id=task.id))) == result


@in_a_cluster(upload_retention_seconds=RETENTION)
async def test_a_release_a_crash_left_undone_is_done_at_start(cluster: Cluster) -> None:
    assert cluster.pool is not None
    stub = await cluster.operator_stub()
    digest = await upload(stub, b"input")
    task = await stub.Submit(submit(inputs=[a_file("d", digest)]))
    tasks = cluster.pool.tasks
    # The task ends behind the pool's back (as if it crashed before releasing anything).
    assert await tasks.assign_many([(task.id, 1, "w9")]) == [True]
    finished = pb.TaskResult(task_id=task.id, attempt=1, status="failed", exit_code=1)
    assert await tasks.finish("w9", finished) == "failed"
    assert not (await tasks.get(task.id)).released
    await cluster.restart_pool()
    assert (await cluster.pool.tasks.get(task.id)).released
    assert collect_later(cluster) == (1, len(b"input"))


@in_a_cluster()
async def test_an_upload_broken_off_resumes_where_the_hub_stopped(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    data = secrets.token_bytes(3 * CHUNK_BYTES + 1)
    begun = await stub.BeginUpload(pb.UploadRequest(digest=digest_of(data), size=len(data)))

    async def first_chunk() -> AsyncIterator[pb.UploadChunk]:
        yield pb.UploadChunk(upload_id=begun.upload_id, offset=0, data=data[:CHUNK_BYTES])

    assert (await stub.Upload(first_chunk())).offset == CHUNK_BYTES
    again = await stub.BeginUpload(pb.UploadRequest(digest=digest_of(data), size=len(data)))
    assert (again.upload_id, again.offset, again.complete) == (begun.upload_id, CHUNK_BYTES, False)

    async def a_gap() -> AsyncIterator[pb.UploadChunk]:
        yield pb.UploadChunk(upload_id=begun.upload_id, offset=CHUNK_BYTES, data=b"x")
        yield pb.UploadChunk(offset=CHUNK_BYTES + 5, data=b"y")

    assert (await refused(stub.Upload(a_gap()))).code().name == "INVALID_ARGUMENT"
    assert await upload(stub, data) == digest_of(data)  # from where the hub holds it


@in_a_cluster()
async def test_the_hub_uploads_and_submits_for_an_account(cluster: Cluster) -> None:
    hub = await cluster.tasks_stub(await cluster.add_node(HUB_NODE_ID, "operator"))
    digest = await upload(hub, b"alice's data", account="user:alice")
    inputs = [a_file("d", digest)]
    task = await hub.Submit(submit(owner="user:alice", inputs=inputs))
    assert task.owner == "user:alice" and task.inputs[0].size == len(b"alice's data")
    failed = await refused(hub.Submit(submit(owner="user:bob", inputs=inputs)))
    assert failed.code() == grpc.StatusCode.NOT_FOUND  # bob never sent those bytes


@in_a_cluster()
async def test_uploads_are_the_callers_own_and_blobs_are_for_workers(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    request = pb.UploadRequest(digest=digest_of(b"x"), size=1, account="user:alice")
    assert (await refused(stub.BeginUpload(request))).code().name == "PERMISSION_DENIED"
    operator = await cluster.add_node("op2", "operator")
    async with aio_channel(operator) as channel:
        blob_read = pb.BlobRead(digest=digest_of(b"x"), task_id="t000000000001", attempt=1)
        failed = await refused(pb_grpc.BlobsStub(channel).Read(blob_read))
    assert failed.code() == grpc.StatusCode.PERMISSION_DENIED
