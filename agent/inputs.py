"""The worker's cache of task inputs, by content: fetched once, verified, shared by all tasks.

Files live under ``<agent state>/cache/inputs/``: ``<hex>`` is a complete blob whose SHA-256
matched its digest (read-only, world-readable: a task's container mounts it as it is),
``<hex>.part`` one being fetched; ``url-<u>-<hex>`` and ``url-<u>-<hex>.part`` likewise for
blobs fetched from a URL, ``<u>`` naming the URL (16 hex digits of its SHA-256). They live
apart because only the hub checks who may have a blob: the pool gives a task a hub input
only if its owner holds it (proof of possession); a URL input is only its submitter's word
for a digest, so it is served only from a copy fetched from that same URL — never from one
the hub sent for another user's task, nor one fetched from another user's (say signed)
URL: either would hand that user's data to whoever names its digest.

A fetch cut short (a reconnect, a crash of the agent) resumes where the partial file ends,
after re-hashing what it holds; a blob whose bytes do not match its digest (or more than
the input may have) is deleted, never kept; one given up for any other reason (the hub
refused the attempt that was fetching it, say) is kept for the next task or attempt to
resume.

``InputCache.held`` gives a task its inputs and pins them while it runs: a second task
wanting a blob the cache holds (a copy that may serve it) fetches nothing, two wanting the
same copy at once share one fetch. The cache
is bounded by ``max_bytes`` (agent setting ``input_cache_bytes``): past it, the blobs used
longest ago that no running task holds are removed. An input larger than the whole cache
fails its task. Where the bytes come from (the hub, a URL) is agent/inputsources.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hivemind_cluster.core.console import one_line
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.units import MIB, format_bytes
from hivemind_cluster.model.blobs import Hasher, InputRef, digest_hex, hash_file
from hivemind_cluster.model.states import TaskState

log = logging.getLogger(__name__)

CACHE_DIR = Path("cache") / "inputs"
PART = ".part"
FROM_URL = "url-"  # the name's prefix of a blob fetched from a URL: url-<URL's>-<hex>
URL_KEY_DIGITS = 16  # of the URL's SHA-256, in that name
HEX_DIGITS = frozenset("0123456789abcdef")
# A fetch that fails for a reason other than a refusal is resumed this often, after a pause.
RETRY_PAUSES = (0.5, 1.0, 2.0, 5.0, 10.0)
# Progress lines in the task's log: every tenth of the input or every few seconds, for
# inputs large enough to take a while.
PROGRESS_SECONDS = 5.0
PROGRESS_STEPS = 10
PROGRESS_FROM_BYTES = 16 * MIB

Note = Callable[[str], None]  # one line for the task's log
# A blob's bytes from an offset to its end, in order (agent/inputsources.py makes them).
ReadFrom = Callable[[int], AsyncGenerator[bytes, None]]


class InputUnavailable(Exception):
    """A task cannot have an input: why, in one line, and the status the task ends in."""

    def __init__(self, message: str, status: str = TaskState.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class WrongBytes(InputUnavailable):
    """What came is not the input: other bytes than its digest names, or more than it may
    have. Its partial copy can never be made whole, so it is deleted (any other reason to
    give up keeps the copy for the next fetch to resume)."""


class RangeRefused(Exception):
    """The source will not send the blob from the offset asked (HTTP 416, or a 206 of
    another range): the partial copy may be whole already, or is fetched again from 0."""


@dataclass(frozen=True)
class Wanted:
    """One blob a task needs, and where its bytes come from."""

    ref: InputRef
    read: ReadFrom
    origin: str  # "the hub", or the URL's host, for the log


@dataclass
class Entry:
    size: int
    used: float  # unix time of its last use (the file's mtime across restarts)


def shown_name(ref: InputRef) -> str:
    return f"input {ref.name}" if ref.name else "the bundle"


def cache_key(ref: InputRef) -> str:
    """The one copy that may serve ``ref``, and that a fetch for it makes: a hub input the
    hub's copy ``<hex>`` (its owner holds the blob: the pool checked), a URL input only one
    fetched from that very URL, ``url-<u>-<hex>`` (naming another's digest with some allowed
    URL is no way to it)."""
    key = digest_hex(ref.digest)
    if not ref.url:
        return key
    url_key = hashlib.sha256(ref.url.encode()).hexdigest()[:URL_KEY_DIGITS]
    return f"{FROM_URL}{url_key}-{key}"


def key_in(name: str) -> tuple[str, bool] | None:
    """The key a cache file's name holds and whether it is partial; None for another file."""
    key = name.removesuffix(PART)
    hex_digits = key
    if key.startswith(FROM_URL):
        url_key, _, hex_digits = key.removeprefix(FROM_URL).partition("-")
        if len(url_key) != URL_KEY_DIGITS or not set(url_key) <= HEX_DIGITS:
            return None
    if len(hex_digits) != 64 or not set(hex_digits) <= HEX_DIGITS:
        return None
    return key, key != name


class InputCache:
    """Blobs by key (``cache_key``) under ``root``, at most ``max_bytes`` of them (pinned
    ones aside).

    Used from one event loop (the worker's); file work runs on threads.
    """

    def __init__(self, root: Path, max_bytes: int, clock: Callable[[], float] = time.time):
        self.root = root
        self.max_bytes = max_bytes
        self.clock = clock
        self.pins: Counter[str] = Counter()
        self.fetching: dict[str, asyncio.Task[Path]] = {}
        self.reserved: dict[str, int] = {}  # bytes on their way in, by fetch
        self.entries: dict[str, Entry] = {}
        # Partial files no fetch is writing (a crash, a fetch given up): kept to resume,
        # counted, and the first to go when the cache is over its bound.
        self.parts: dict[str, Entry] = {}
        for path in self.root.iterdir() if self.root.is_dir() else ():
            known = key_in(path.name)
            if known is not None and path.is_file():
                key, partial = known
                stats = path.stat()
                (self.parts if partial else self.entries)[key] = Entry(
                    stats.st_size, stats.st_mtime
                )

    def path(self, ref: InputRef) -> Path:
        """Where a fetch for ``ref`` keeps the blob."""
        return self.root / cache_key(ref)

    def total_bytes(self) -> int:
        held = sum(entry.size for entry in (*self.entries.values(), *self.parts.values()))
        return held + sum(self.reserved.values())

    @contextlib.asynccontextmanager
    async def held(self, wanted: list[Wanted], note: Note) -> AsyncIterator[dict[str, Path]]:
        """Each wanted blob in the cache (fetched if missing), pinned for the block: their
        paths by digest. Raises InputUnavailable when one cannot be had for the task's own
        reasons, SystemFailure when this worker cannot fetch it (so the pool retries).
        A digest wanted both from the hub and from a URL is fetched from the URL: that copy
        serves both."""
        by_digest: dict[str, Wanted] = {}
        for want in wanted:
            if want.ref.url or want.ref.digest not in by_digest:
                by_digest[want.ref.digest] = want
        unique = list(by_digest.values())
        self.check_fits([want.ref for want in unique])
        keys = [cache_key(want.ref) for want in unique]
        self.pins.update(keys)
        try:
            yield {want.ref.digest: await self.have(want, note) for want in unique}
        finally:
            self.pins.subtract(keys)
            self.pins += Counter()  # drop the zero counts
            self.evict()

    def check_fits(self, refs: list[InputRef]) -> None:
        total = sum(ref.size for ref in refs)
        if total > self.max_bytes:
            what = shown_name(refs[0]) if len(refs) == 1 else "the task's inputs"
            raise InputUnavailable(
                f"{what} ({format_bytes(total)}) is larger than this worker's input cache "
                f"({format_bytes(self.max_bytes)}, agent setting input_cache_bytes)"
            )

    async def have(self, want: Wanted, note: Note) -> Path:
        """The blob's file: in the cache already (a copy that may serve it), fetched by
        another task meanwhile, or fetched now (a fetch started for another task that fails
        is tried again for ours)."""
        key = cache_key(want.ref)
        while True:
            entry = self.entries.get(key)
            if entry is not None:
                self.touch(key, entry)
                note(f"{shown_name(want.ref)}: {format_bytes(entry.size)} from the cache")
                return self.root / key
            running = self.fetching.get(key)
            if running is None:
                break
            note(f"{shown_name(want.ref)}: another task is fetching it, waiting")
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        job = asyncio.create_task(self.fetch(want, note))
        self.fetching[key] = job
        job.add_done_callback(lambda done: self.fetch_ended(key, done))
        return await asyncio.shield(job)  # a cancelled task leaves the fetch to the others

    def fetch_ended(self, key: str, job: asyncio.Task[Path]) -> None:
        self.fetching.pop(key, None)
        self.reserved.pop(key, None)
        with contextlib.suppress(FileNotFoundError):  # a fetch given up: kept to resume
            self.parts[key] = Entry((self.root / f"{key}{PART}").stat().st_size, self.clock())
        if not job.cancelled():
            job.exception()  # retrieved: a failure nobody waits for any more is not logged

    def touch(self, key: str, entry: Entry) -> None:
        entry.used = self.clock()
        with contextlib.suppress(OSError):
            os.utime(self.root / key, (entry.used, entry.used))

    async def fetch(self, want: Wanted, note: Note) -> Path:
        ref, key = want.ref, cache_key(want.ref)
        self.parts.pop(key, None)  # counted as reserved while this fetch runs
        self.reserved[key] = ref.size
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.evict()
        part = self.root / f"{key}{PART}"
        started = time.monotonic()
        try:
            hasher = await self.fetch_verified(want, part, note)
        except WrongBytes:
            part.unlink(missing_ok=True)  # never to be whole: nothing is kept
            raise
        path = self.root / key
        part.chmod(0o444)
        os.rename(part, path)
        self.entries[key] = Entry(hasher.size, self.clock())
        took = time.monotonic() - started
        note(f"{shown_name(ref)}: fetched {format_bytes(hasher.size)} in {took:.1f}s")
        return path

    async def fetch_verified(self, want: Wanted, part: Path, note: Note) -> Hasher:
        """The blob whole in ``part`` and its hash, which matches its digest (a resumed
        copy that does not is fetched once more from the start)."""
        ref = want.ref
        hasher, resumed = await asyncio.to_thread(resume_point, part, ref.size)
        size = format_bytes(ref.size) if ref.size else "size unknown"
        if resumed:
            note(f"{shown_name(ref)}: resuming at {format_bytes(resumed)} of {size}")
        else:
            note(f"{shown_name(ref)}: fetching {size} from {want.origin}")
        hasher = await self.fetch_into(want, part, hasher, note)
        if hasher.digest != ref.digest and resumed:
            note(f"{shown_name(ref)}: the resumed copy did not match, fetching it again")
            part.unlink(missing_ok=True)
            hasher = await self.fetch_into(want, part, Hasher(), note)
        if hasher.digest != ref.digest:
            raise WrongBytes(
                f"{shown_name(ref)} from {want.origin} has digest {hasher.digest}, "
                f"not {ref.digest}: refused"
            )
        return hasher

    async def fetch_into(self, want: Wanted, part: Path, hasher: Hasher, note: Note) -> Hasher:
        """Append the blob's bytes to ``part`` from where it ends until the blob is whole,
        resuming after a failure (RETRY_PAUSES in a row without progress) that is not a
        refusal; from 0 when the source will not send from where it ends."""
        progress = Progress(note, shown_name(want.ref), want.ref.size, hasher.size)
        failures = 0
        error: Exception
        with open(part, "ab") as sink:
            while True:
                before = hasher.size
                try:
                    await self.stream_into(want, sink, hasher, progress)
                    return hasher
                except (InputUnavailable, asyncio.CancelledError):
                    raise
                except RangeRefused as refused:
                    if hasher.size and hasher.digest == want.ref.digest:
                        return hasher  # it was whole already: there is nothing past its end
                    await asyncio.to_thread(sink.truncate, 0)
                    hasher, error = Hasher(), refused
                except Exception as failed:
                    error = failed
                failures = 0 if hasher.size > before else failures + 1
                if failures >= len(RETRY_PAUSES):
                    raise SystemFailure(
                        f"could not fetch {shown_name(want.ref)} from {want.origin}: "
                        f"{one_line(str(error)) or type(error).__name__}"
                    ) from error
                log.warning("%s: fetch cut (%s), resuming", shown_name(want.ref), error)
                await asyncio.sleep(RETRY_PAUSES[failures])

    async def stream_into(
        self, want: Wanted, sink: IO[bytes], hasher: Hasher, progress: Progress
    ) -> None:
        """One read of the source, from where ``hasher`` is to the blob's end (its stream
        closed however this ends)."""
        size, bound = want.ref.size, want.ref.size or self.max_bytes
        if size and hasher.size >= size:
            return
        async with contextlib.aclosing(want.read(hasher.size)) as stream:
            async for data in stream:
                if hasher.size + len(data) > bound:
                    raise WrongBytes(too_large(want, bound))
                await asyncio.to_thread(append, sink, hasher, data)
                progress.moved(hasher.size)
        if size and hasher.size != size:
            raise ConnectionError(f"the stream ended at {hasher.size} of {size} bytes")

    def evict(self) -> None:
        """Remove the partial files no fetch writes, then the blobs used longest ago, none
        that a task holds, until the cache fits."""
        total = self.total_bytes()
        for key in sorted(self.parts, key=lambda k: self.parts[k].used):
            if total <= self.max_bytes:
                return
            (self.root / f"{key}{PART}").unlink(missing_ok=True)
            total -= self.parts.pop(key).size
        for key in sorted(self.entries, key=lambda k: self.entries[k].used):
            if total <= self.max_bytes:
                return
            if self.pins[key]:
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.root / key).unlink()
            total -= self.entries.pop(key).size
            log.info("input cache: evicted %s", key[:16])


def too_large(want: Wanted, bound: int) -> str:
    return f"{shown_name(want.ref)} from {want.origin} is larger than {format_bytes(bound)}"


def append(sink: IO[bytes], hasher: Hasher, data: bytes) -> None:
    """Write and hash one chunk (on a thread: neither blocks the event loop)."""
    sink.write(data)
    hasher.update(data)


def resume_point(part: Path, size: int) -> tuple[Hasher, int]:
    """The hash of what a partial file holds, and its length (0 and no file when there is
    nothing to resume: none, or more than the blob's size)."""
    try:
        held = part.lstat().st_size
    except FileNotFoundError:
        return Hasher(), 0
    if not part.is_file() or (size and held > size):
        part.unlink()
        return Hasher(), 0
    hasher = hash_file(part, limit=held)
    return hasher, hasher.size


class Progress:
    """A line every tenth of the input or every PROGRESS_SECONDS, for large inputs."""

    def __init__(self, note: Note, what: str, size: int, done: int) -> None:
        self.note, self.what, self.size = note, what, size
        self.quiet = 0 < size < PROGRESS_FROM_BYTES
        self.step = done * PROGRESS_STEPS // size if size else 0
        self.last = time.monotonic()

    def moved(self, done: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        step = done * PROGRESS_STEPS // self.size if self.size else 0
        if step > self.step or now - self.last >= PROGRESS_SECONDS:
            self.step, self.last = step, now
            if self.size and done < self.size:
                percent = done * 100 // self.size
                self.note(
                    f"{self.what}: {format_bytes(done)} of {format_bytes(self.size)} ({percent}%)"
                )
            elif not self.size:
                self.note(f"{self.what}: {format_bytes(done)} so far")
