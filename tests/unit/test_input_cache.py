"""The worker's input cache (agent/inputs.py) with blobs from the hub (agent/inputsources.py
``HubSource``): fetched from a fake hub's ``Blobs.Read`` (a grpc.aio server on a free port),
verified, resumed after a cut, a crash or a refusal, shared and evicted. URL inputs are
tests/unit/test_agent_input_urls.py's; the helpers here serve both (and other tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from hivemind_cluster.agent.inputs import PART, InputCache, InputUnavailable, Wanted, cache_key
from hivemind_cluster.agent.inputsources import HubSource
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.blobs import CHUNK_BYTES, DIGEST_PREFIX, InputRef
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

TASK = ("t000000000001", 1)
Context = grpc.aio.ServicerContext[Any, Any]


def digest_of(data: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def ref_of(data: bytes, name: str = "data.bin") -> InputRef:
    return InputRef(name, digest_of(data), len(data))


class FakeBlobs(pb_grpc.BlobsServicer):
    """``Blobs.Read`` of what ``blobs`` holds; it notes each read's (digest, offset), and
    can cut a stream after some chunks (with ``cut_code``), send other bytes, or refuse."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.reads: list[tuple[str, int]] = []
        self.cut_after_chunks: int | None = None
        self.cut_code = grpc.StatusCode.UNAVAILABLE
        self.served: dict[str, bytes] = {}  # digest -> the bytes sent instead
        self.refusal: grpc.StatusCode | None = None
        self.release = asyncio.Event()
        self.release.set()

    def hold(self, data: bytes) -> InputRef:
        self.blobs[digest_of(data)] = data
        return ref_of(data)

    async def Read(self, request: pb.BlobRead, context: Context) -> AsyncIterator[pb.BlobChunk]:
        self.reads.append((request.digest, request.offset))
        assert (request.task_id, request.attempt) == TASK
        if self.refusal is not None:
            await context.abort(self.refusal, "not an input of that attempt")
        await self.release.wait()
        data = self.served.get(request.digest, self.blobs[request.digest])
        for sent, start in enumerate(range(request.offset, len(data), CHUNK_BYTES)):
            if self.cut_after_chunks is not None and sent >= self.cut_after_chunks:
                self.cut_after_chunks = None
                await context.abort(self.cut_code, "the link went down")
            yield pb.BlobChunk(data=data[start : start + CHUNK_BYTES])

    async def WriteResult(
        self, request_iterator: AsyncIterator[pb.ResultChunk], context: Context
    ) -> pb.UploadState:
        raise NotImplementedError

    async def ResultOffset(self, request: pb.ResultChunk, context: Context) -> pb.UploadState:
        raise NotImplementedError


@asynccontextmanager
async def serving(servicer: pb_grpc.BlobsServicer) -> AsyncIterator[grpc.aio.Channel]:
    """The servicer on a grpc.aio server on a free loopback port, and a channel to it."""
    server = grpc.aio.server()
    pb_grpc.add_BlobsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


def pool_channel(channel: grpc.aio.Channel) -> Callable[[], Awaitable[grpc.aio.Channel]]:
    async def current() -> grpc.aio.Channel:
        return channel

    return current


Body = Callable[[FakeBlobs, HubSource], Awaitable[None]]


def with_a_hub(body: Body) -> None:
    async def main() -> None:
        hub = FakeBlobs()
        async with serving(hub) as channel:
            await body(hub, HubSource(pool_channel(channel)))

    asyncio.run(main())


async def fetched(cache: InputCache, *wanted: Wanted) -> dict[str, bytes]:
    notes: list[str] = []
    async with cache.held(list(wanted), notes.append) as paths:
        return {digest: path.read_bytes() for digest, path in paths.items()}


def files_in(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def part_in(root: Path, ref: InputRef) -> Path:
    """The partial file a fetch for ``ref`` writes in a cache at ``root`` (and resumes)."""
    return root / f"{cache_key(ref)}{PART}"


def test_a_blob_is_fetched_verified_and_kept_read_only(tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK_BYTES + 123)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 64 * MIB)
        ref = hub.hold(data)
        assert await fetched(cache, source.wanted(ref, *TASK)) == {ref.digest: data}
        blob = cache.path(ref)
        assert files_in(tmp_path) == [blob.name]
        assert blob.stat().st_mode & 0o777 == 0o444
        assert hub.reads == [(ref.digest, 0)]

    with_a_hub(body)


def test_a_fetch_resumes_from_the_partial_file_a_crash_left(tmp_path: Path) -> None:
    data = secrets.token_bytes(5 * CHUNK_BYTES)
    crashed_at = random.randrange(1, len(data))

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(data)
        part_in(tmp_path, ref).write_bytes(data[:crashed_at])
        cache = InputCache(tmp_path, 64 * MIB)  # the agent, started again
        assert await fetched(cache, source.wanted(ref, *TASK)) == {ref.digest: data}
        assert hub.reads == [(ref.digest, crashed_at)]
        assert files_in(tmp_path) == [cache.path(ref).name]

    with_a_hub(body)


def test_a_stream_cut_midway_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = secrets.token_bytes(4 * CHUNK_BYTES)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(data)
        hub.cut_after_chunks = 2
        assert await fetched(InputCache(tmp_path, 64 * MIB), source.wanted(ref, *TASK)) == {
            ref.digest: data
        }
        assert hub.reads == [(ref.digest, 0), (ref.digest, 2 * CHUNK_BYTES)]

    with_a_hub(body)


def test_a_partial_file_that_is_wrong_is_fetched_again_from_the_start(tmp_path: Path) -> None:
    data = secrets.token_bytes(2 * CHUNK_BYTES)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(data)
        part_in(tmp_path, ref).write_bytes(b"garbage")
        assert await fetched(InputCache(tmp_path, 64 * MIB), source.wanted(ref, *TASK)) == {
            ref.digest: data
        }
        assert hub.reads == [(ref.digest, len(b"garbage")), (ref.digest, 0)]

    with_a_hub(body)


def test_bytes_that_do_not_match_the_digest_are_refused_and_not_kept(tmp_path: Path) -> None:
    data = secrets.token_bytes(CHUNK_BYTES + 5)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(data)
        hub.served[ref.digest] = bytes(len(data))  # as long, other bytes
        cache = InputCache(tmp_path, 64 * MIB)
        with pytest.raises(InputUnavailable, match=f"has digest .*, not {ref.digest}: refused"):
            await fetched(cache, source.wanted(ref, *TASK))
        assert files_in(tmp_path) == []
        assert cache.entries == {}

    with_a_hub(body)


def test_a_refusal_of_the_hub_fails_the_input_at_once(tmp_path: Path) -> None:
    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(b"x")
        hub.refusal = grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(InputUnavailable, match=r"input data\.bin: the hub refused it: not an"):
            await fetched(InputCache(tmp_path, MIB), source.wanted(ref, *TASK))
        assert len(hub.reads) == 1

    with_a_hub(body)


def test_a_fetch_the_hub_refuses_midway_keeps_its_part_for_the_next_attempt(
    tmp_path: Path,
) -> None:
    """The attempt that started a fetch was cancelled or superseded: the hub refuses it
    from then on, but what came is right, and the next attempt resumes from it."""
    data = secrets.token_bytes(4 * CHUNK_BYTES)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(data)
        hub.cut_after_chunks, hub.cut_code = 2, grpc.StatusCode.PERMISSION_DENIED
        cache = InputCache(tmp_path, 64 * MIB)
        with pytest.raises(InputUnavailable, match="the hub refused it"):
            await fetched(cache, source.wanted(ref, *TASK))
        key = cache.path(ref).name
        assert files_in(tmp_path) == [f"{key}{PART}"] and cache.parts[key].size == 2 * CHUNK_BYTES
        assert await fetched(cache, source.wanted(ref, *TASK)) == {ref.digest: data}
        assert hub.reads == [(ref.digest, 0), (ref.digest, 2 * CHUNK_BYTES)]
        assert cache.parts == {} and files_in(tmp_path) == [key]

    with_a_hub(body)


def test_an_input_larger_than_the_cache_fails_its_task(tmp_path: Path) -> None:
    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(secrets.token_bytes(2 * MIB))
        with pytest.raises(InputUnavailable, match=r"larger than this worker's input cache"):
            await fetched(InputCache(tmp_path, MIB), source.wanted(ref, *TASK))
        assert hub.reads == []

    with_a_hub(body)


def test_the_same_input_is_fetched_once_for_tasks_at_once_and_after(tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK_BYTES)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 64 * MIB)
        ref = hub.hold(data)
        hub.release.clear()  # both tasks ask before the first byte arrives
        together = asyncio.gather(
            fetched(cache, source.wanted(ref, *TASK)), fetched(cache, source.wanted(ref, *TASK))
        )
        await asyncio.sleep(0.2)
        hub.release.set()
        assert list(await together) == [{ref.digest: data}] * 2
        assert await fetched(cache, source.wanted(ref, *TASK)) == {ref.digest: data}
        assert hub.reads == [(ref.digest, 0)]

    with_a_hub(body)


def test_the_least_recently_used_unpinned_blobs_are_evicted(tmp_path: Path) -> None:
    blobs = [secrets.token_bytes(MIB) for _ in range(4)]
    ticks = iter(range(1, 100))

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 3 * MIB, clock=lambda: float(next(ticks)))
        a, b, c, d = (source.wanted(hub.hold(data), *TASK) for data in blobs)
        notes: list[str] = []
        async with cache.held([a], notes.append):  # a is pinned by a running task
            await fetched(cache, b)
            await fetched(cache, c)
            await fetched(cache, d)  # over the bound: b goes, the oldest not pinned
            assert set(cache.entries) == {cache.path(w.ref).name for w in (a, c, d)}
        await fetched(cache, b)  # a is no longer pinned and the oldest now
        kept = {cache.path(w.ref).name for w in (b, c, d)}
        assert set(cache.entries) == kept and set(files_in(tmp_path)) == kept
        assert not any(name.endswith(PART) for name in files_in(tmp_path))

    with_a_hub(body)


def test_a_large_fetch_says_how_far_it_is_in_the_task_s_log(tmp_path: Path) -> None:
    data = secrets.token_bytes(20 * MIB)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        notes: list[str] = []
        cache = InputCache(tmp_path, 64 * MIB)
        async with cache.held([source.wanted(hub.hold(data), *TASK)], notes.append):
            pass
        progress = [note for note in notes if note.endswith("%)")]
        percents = [int(note.rsplit("(", 1)[1].rstrip("%)")) for note in progress]
        assert 8 <= len(progress) <= 12 and percents == sorted(percents), notes
        assert notes[0] == "input data.bin: fetching 20 MiB from the hub"
        assert notes[-1].startswith("input data.bin: fetched 20 MiB in ")

    with_a_hub(body)


def test_a_partial_file_nobody_fetches_counts_and_is_the_first_to_go(tmp_path: Path) -> None:
    stale = tmp_path / f"{'ab' * 32}{PART}"
    stale.write_bytes(bytes(2 * MIB))  # left by a crash; that input is not wanted again

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 3 * MIB)
        assert cache.total_bytes() == 2 * MIB
        a, b = (source.wanted(hub.hold(secrets.token_bytes(MIB)), *TASK) for _ in range(2))
        await fetched(cache, a)
        assert stale.exists()  # 3 MiB: within the bound
        await fetched(cache, b)
        assert not stale.exists() and len(cache.entries) == 2

    with_a_hub(body)
