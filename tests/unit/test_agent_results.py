"""A worker's result zip (agent/results.py): packed to a file, sent to a fake hub's
``Blobs.ResultOffset``/``WriteResult`` (a grpc.aio server on a free port) in chunks of at
most CHUNK_BYTES, resumed after a cut from the offset the hub holds, and never held whole
in memory; the hub's refusals end the delivery as the worker needs to know, and the worker reports a
result whose zip was not sent without it."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hivemind_cluster.agent import results
from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.results import Delivery, ResultZips, deliver, sent
from hivemind_cluster.agent.taskrun import ResultFile
from hivemind_cluster.agent.workcopy import pack_result
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.blobs import CHUNK_BYTES, DIGEST_PREFIX, hash_file
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import GiB, ScriptedExecutor
from tests.unit.test_input_cache import Context, FakeBlobs, pool_channel, serving

TASK = ("t000000000002", 3)


class ResultHub(FakeBlobs):
    """Keeps one result in a file, as the hub's store does: appends at the offset it holds,
    checks the digest at the end; can cut the first ``cuts`` streams after some messages, or
    refuse."""

    def __init__(self, sink: Path) -> None:
        super().__init__()
        self.sink = sink
        self.sink.write_bytes(b"")
        self.cut_after_messages: int | None = None
        self.cuts = 1
        self.offsets: list[int] = []  # where each WriteResult started
        self.largest = 0

    def state(self, header: pb.ResultChunk) -> pb.UploadState:
        held = self.sink.stat().st_size
        complete = held == header.size and hash_file(self.sink).digest == header.digest
        return pb.UploadState(
            offset=held, size=header.size, digest=header.digest, complete=complete
        )

    async def ResultOffset(self, request: pb.ResultChunk, context: Context) -> pb.UploadState:
        if self.refusal is not None:
            await context.abort(self.refusal, "no longer this worker's attempt")
        assert (request.task_id, request.attempt) == TASK
        return self.state(request)

    async def WriteResult(
        self, request_iterator: AsyncIterator[pb.ResultChunk], context: Context
    ) -> pb.UploadState:
        header: pb.ResultChunk | None = None
        with open(self.sink, "ab") as sink:
            async for number, message in aenumerate(request_iterator):
                if header is None:
                    header = message
                    assert (message.task_id, message.attempt) == TASK and message.digest
                    assert message.offset == sink.tell()
                    self.offsets.append(message.offset)
                if self.cut_after_messages is not None and number >= self.cut_after_messages:
                    self.cuts -= 1
                    if self.cuts <= 0:
                        self.cut_after_messages = None
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the link went down")
                self.largest = max(self.largest, len(message.data))
                sink.write(message.data)
        assert header is not None
        return self.state(header)


async def aenumerate(
    messages: AsyncIterator[pb.ResultChunk],
) -> AsyncIterator[tuple[int, pb.ResultChunk]]:
    number = 0
    async for message in messages:
        yield number, message
        number += 1


def packed(tmp_path: Path, size: int) -> ResultFile:
    """A result zip of ``size`` random bytes in /out, packed as the executor packs one."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    with open(out / "big.bin", "wb") as big:
        for _ in range(size // MIB):
            big.write(secrets.token_bytes(MIB))
    dest = tmp_path / "results" / "t-1.zip"
    dest.parent.mkdir()
    zipped = pack_result(out, work, {}, dest)
    return ResultFile(dest, hash_file(dest).digest, zipped)


def delivered(hub: ResultHub, output: ResultFile) -> Delivery:
    async def main() -> Delivery:
        async with serving(hub) as channel:
            return await deliver(pool_channel(channel), *TASK, output)

    return asyncio.run(main())


def test_a_big_result_is_packed_to_a_file_and_sent_in_chunks_resumed_after_a_cut(
    tmp_path: Path,
) -> None:
    tracemalloc.start()
    try:
        output = packed(tmp_path, 64 * MIB)
        hub = ResultHub(tmp_path / "hub.zip")
        hub.cut_after_messages = 20
        delivery = delivered(hub, output)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert delivery.sent, delivery
    assert output.size > 64 * MIB
    assert hub.offsets == [0, 20 * CHUNK_BYTES]  # the second stream resumed where it was cut
    assert hub.largest == CHUNK_BYTES
    digest = DIGEST_PREFIX + hashlib.sha256((tmp_path / "hub.zip").read_bytes()).hexdigest()
    assert digest == output.digest
    assert peak < 16 * MIB  # neither side held the result whole


def test_a_result_cut_more_often_than_retries_goes_on_while_the_hub_gets_more_of_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only failures in a row with nothing more held count: a slow link that keeps being
    cut still gets the result there."""
    monkeypatch.setattr(results, "RETRY_PAUSES", (0.0,) * len(results.RETRY_PAUSES))
    cuts = 2 * len(results.RETRY_PAUSES)
    path = tmp_path / "t-1.zip"
    path.write_bytes(secrets.token_bytes((cuts + 2) * CHUNK_BYTES))
    output = ResultFile(path, hash_file(path).digest, path.stat().st_size)
    hub = ResultHub(tmp_path / "hub.zip")
    hub.cut_after_messages, hub.cuts = 1, cuts
    assert delivered(hub, output).sent
    assert hub.offsets == [number * CHUNK_BYTES for number in range(cuts + 1)]


def test_a_result_the_hub_holds_already_is_not_sent_again(tmp_path: Path) -> None:
    output = packed(tmp_path, 2 * MIB)
    hub = ResultHub(tmp_path / "hub.zip")
    hub.sink.write_bytes(output.path.read_bytes())
    assert delivered(hub, output).sent
    assert hub.offsets == []


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, Delivery(False, "", superseded=True)),
        (grpc.StatusCode.INVALID_ARGUMENT, Delivery(False, "", refused=True)),
    ],
)
def test_a_refusal_of_the_hub_ends_the_delivery(
    code: grpc.StatusCode, verdict: Delivery, tmp_path: Path
) -> None:
    hub = ResultHub(tmp_path / "hub.zip")
    hub.refusal = code
    delivery = delivered(hub, packed(tmp_path, MIB))
    assert (delivery.sent, delivery.superseded, delivery.refused) == (
        verdict.sent,
        verdict.superseded,
        verdict.refused,
    )
    assert "no longer this worker's attempt" in delivery.error


def a_zip(tmp_path: Path) -> ResultFile:
    path = tmp_path / "t-1.zip"
    path.write_bytes(b"PK\x05\x06" + bytes(18))
    return ResultFile(path, DIGEST_PREFIX + "0" * 64, path.stat().st_size)


def test_a_zip_being_sent_stops_and_is_deleted_when_the_pool_drops_the_attempt(
    tmp_path: Path,
) -> None:
    zipped = a_zip(tmp_path)

    async def main() -> None:
        started = asyncio.Event()

        async def send(task_id: str, attempt: int, output: ResultFile) -> Delivery:
            started.set()
            await asyncio.sleep(60)
            return Delivery(True)

        zips = ResultZips(send)
        sending = asyncio.create_task(zips.deliver(TASK, zipped))
        await started.wait()
        assert TASK in zips.uploads  # the worker registers the attempt as its own meanwhile
        zips.drop(TASK)
        assert await sending is None
        assert zips.uploads == {} and zips.files == {}

    asyncio.run(main())
    assert not zipped.path.exists()


@pytest.mark.parametrize(
    ("delivery", "status"),
    [
        (Delivery(False, "the hub refused the result: too large", refused=True), "failed"),
        (Delivery(False, "agent error: could not send the result: down"), "interrupted"),
    ],
)
def test_a_result_whose_zip_was_not_sent_is_reported_without_it(
    delivery: Delivery, status: str, tmp_path: Path
) -> None:
    zipped = a_zip(tmp_path)
    identity = Identity("w1", b"", b"", b"", "127.0.0.1:1")
    worker = Worker(identity, ScriptedExecutor(), Facts(Resources(1000, GiB, 0)))

    async def send(task_id: str, attempt: int, output: ResultFile) -> Delivery:
        return delivery

    worker._zips.send = send
    result = pb.TaskResult(
        task_id=TASK[0],
        attempt=TASK[1],
        status="succeeded",
        output_digest=zipped.digest,
        output_size=zipped.size,
    )
    reported, superseded = asyncio.run(sent(worker._zips, result, zipped))
    assert reported is not None and not superseded
    assert (reported.status, reported.error) == (status, delivery.error)
    assert (reported.output_digest, reported.output_size) == ("", 0)
    assert not zipped.path.exists()
    worker.transfers.remove()
