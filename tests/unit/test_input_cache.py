"""The worker's input cache (agent/inputs.py) and its sources (agent/inputsources.py): blobs
fetched from a fake hub's ``Blobs.Read`` (a grpc.aio server on a free port) or from a URL
served on 127.0.0.1, verified, resumed after a cut or a crash, shared and evicted.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import ipaddress
import random
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from hivemind_cluster.agent.inputs import PART, InputCache, InputUnavailable, Wanted
from hivemind_cluster.agent.inputsources import HubSource, UrlSource
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
    can cut a stream after some chunks, send other bytes, or refuse."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.reads: list[tuple[str, int]] = []
        self.cut_after_chunks: int | None = None
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
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the link went down")
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


def test_a_blob_is_fetched_verified_and_kept_read_only(tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK_BYTES + 123)

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        cache = InputCache(tmp_path, 64 * MIB)
        ref = hub.hold(data)
        assert await fetched(cache, source.wanted(ref, *TASK)) == {ref.digest: data}
        blob = cache.path(ref.digest)
        assert files_in(tmp_path) == [blob.name]
        assert blob.stat().st_mode & 0o777 == 0o444
        assert hub.reads == [(ref.digest, 0)]

    with_a_hub(body)


def test_a_fetch_resumes_from_the_partial_file_a_crash_left(tmp_path: Path) -> None:
    data = secrets.token_bytes(5 * CHUNK_BYTES)
    crashed_at = random.randrange(1, len(data))

    async def body(hub: FakeBlobs, source: HubSource) -> None:
        ref = hub.hold(data)
        (tmp_path / f"{ref.digest.removeprefix(DIGEST_PREFIX)}{PART}").write_bytes(
            data[:crashed_at]
        )
        cache = InputCache(tmp_path, 64 * MIB)  # the agent, started again
        assert await fetched(cache, source.wanted(ref, *TASK)) == {ref.digest: data}
        assert hub.reads == [(ref.digest, crashed_at)]
        assert files_in(tmp_path) == [cache.path(ref.digest).name]

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
        part = tmp_path / f"{ref.digest.removeprefix(DIGEST_PREFIX)}{PART}"
        part.write_bytes(b"garbage")
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
            assert set(cache.entries) == {cache.path(w.ref.digest).name for w in (a, c, d)}
        await fetched(cache, b)  # a is no longer pinned and the oldest now
        kept = {cache.path(w.ref.digest).name for w in (b, c, d)}
        assert set(cache.entries) == kept and set(files_in(tmp_path)) == kept
        assert not any(name.endswith(PART) for name in files_in(tmp_path))

    with_a_hub(body)


# ---- URL inputs ------------------------------------------------------------------------


class Site(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (honouring ``Range``), and ``/away`` redirects to ``redirect``."""

    files: ClassVar[dict[str, bytes]] = {}
    redirect = ""
    ranges: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path == "/away":
            self.send_response(302)
            self.send_header("Location", self.redirect)
            self.end_headers()
            return
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        asked = self.headers.get("Range", "")
        self.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-") or 0)
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def a_site(files: dict[str, bytes]) -> Iterator[str]:
    Site.files, Site.ranges = files, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def url_ref(data: bytes, url: str) -> InputRef:
    return InputRef("x.csv", digest_of(data), 0, "file", url)


def test_a_url_input_is_fetched_verified_and_resumed(tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK_BYTES + 7)
    urls = UrlSource([], allow_loopback=True)
    with a_site({"/x.csv": data}) as site:
        ref = url_ref(data, f"{site}/x.csv")
        part = tmp_path / f"{ref.digest.removeprefix(DIGEST_PREFIX)}{PART}"
        part.write_bytes(data[:1000])
        cache = InputCache(tmp_path, 64 * MIB)
        assert asyncio.run(fetched(cache, urls.wanted(ref, 64 * MIB))) == {ref.digest: data}
        assert Site.ranges == ["bytes=1000-"]


def test_a_url_input_with_other_content_or_too_large_is_refused(tmp_path: Path) -> None:
    data = secrets.token_bytes(2 * MIB)
    urls = UrlSource([], allow_loopback=True)
    with a_site({"/x.csv": data}) as site:
        cache = InputCache(tmp_path, 64 * MIB)
        wrong = url_ref(b"something else", f"{site}/x.csv")
        with pytest.raises(InputUnavailable, match=r"from 127\.0\.0\.1 has digest"):
            asyncio.run(fetched(cache, urls.wanted(wrong, 64 * MIB)))
        with pytest.raises(InputUnavailable, match="is larger than 1 MiB"):
            asyncio.run(fetched(cache, urls.wanted(url_ref(data, f"{site}/x.csv"), MIB)))
        assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://[::1]:9/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.77.0.1:8080/x",  # the overlay
        "http://localhost:9/x",
    ],
)
def test_a_url_to_this_machine_link_local_or_the_overlay_is_refused(
    url: str, tmp_path: Path
) -> None:
    urls = UrlSource([ipaddress.ip_network("10.77.0.0/16")])
    with pytest.raises(InputUnavailable, match="which a task's input may not come from"):
        asyncio.run(fetched(InputCache(tmp_path, MIB), urls.wanted(url_ref(b"x", url), MIB)))


def test_a_redirect_to_a_refused_place_is_refused(tmp_path: Path) -> None:
    urls = UrlSource([], allow_loopback=True)
    Site.redirect = "http://169.254.169.254/latest/meta-data"
    with a_site({}) as site:
        ref = url_ref(b"x", f"{site}/away")
        with pytest.raises(InputUnavailable, match=r"169\.254\.169\.254"):
            asyncio.run(fetched(InputCache(tmp_path, MIB), urls.wanted(ref, MIB)))


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
