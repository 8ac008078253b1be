"""Moving blobs between the CLI and the hub: one upload and one download algorithm over
small transports, which ``ApiClient`` (HTTP) and ``GrpcTaskClient`` (gRPC) implement.

Upload: ``begin_upload(digest, size)`` tells what the hub holds; ``complete`` means it has
the blob for this account already and nothing is sent. Otherwise ``send_upload`` appends
the file from the held offset, a request at a time, until the hub says ``complete``. A cut
connection or an offset conflict (another process, a request that arrived twice) asks
``begin_upload`` again, which answers the offset the hub holds, and goes on from there;
killed and run again, the CLI resumes the same way. The hub verifies the SHA-256 at the end.

Download: the result zip is appended to a ``.part`` file (a regular file of the user's,
never a symlink: ``open_part``) from its current size (``read_result`` from an offset; a
transport may answer from 0 when the blob is not the one the part began with), hashed as
it is written, and verified against the task's ``output_digest``: a mismatch removes the
part.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol, TypedDict

from hivemind_cluster.client.progress import QUIET, Bars, Meter
from hivemind_cluster.core.errors import Conflict, HiveMindError, InvalidInput, Unavailable
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.blobs import CHUNK_BYTES, Hasher, OnBytes

# Failures in a row without progress before an upload or a download gives up.
RETRIES = 5
RETRY_PAUSE = 1.0


class UploadState(TypedDict):
    """The hub's word on an upload (the JSON of ``/api/v1/uploads``, ``pb.UploadState``)."""

    upload_id: str  # "" when nothing is to be sent
    offset: int  # bytes the hub holds
    size: int
    digest: str
    complete: bool  # stored and verified: refer to it by digest


def upload_state(data: Any) -> UploadState:
    """An answer checked to be an upload state (else the server is not a HiveMind hub)."""
    fields = {"upload_id": str, "offset": int, "size": int, "digest": str, "complete": bool}
    if not isinstance(data, dict) or any(
        not isinstance(data.get(name), kind) or (kind is int and isinstance(data[name], bool))
        for name, kind in fields.items()
    ):
        raise HiveMindError(f"the hub answered an upload with {str(data)[:80]!r}")
    return UploadState(
        upload_id=data["upload_id"],
        offset=data["offset"],
        size=data["size"],
        digest=data["digest"],
        complete=data["complete"],
    )


class UploadTransport(Protocol):
    def begin_upload(self, digest: str, size: int) -> UploadState:
        """Announce a blob: complete (held already), or where to send from."""
        ...

    def send_upload(
        self, upload_id: str, offset: int, source: BinaryIO, length: int, on_bytes: OnBytes
    ) -> UploadState:
        """Send up to ``length`` bytes of ``source`` (positioned at ``offset``); a transport
        may send fewer (one request's worth). ``on_bytes`` counts what went out."""
        ...


class ResultStream(NamedTuple):
    start: int  # the offset of the first chunk: the one asked for, or 0 (sent whole)
    chunks: Iterator[bytes]


class ResultSource(Protocol):
    def read_result(self, task_id: str, offset: int, digest: str) -> ResultStream:
        """The task's result zip from ``offset``; ``digest`` is the blob the caller holds
        the first ``offset`` bytes of (a transport may check it and answer from 0)."""
        ...


def upload_file(
    transport: UploadTransport,
    path: Path,
    digest: str,
    size: int,
    bars: Bars = QUIET,
    what: str = "",
) -> int:
    """Upload the file at ``path`` (of ``digest`` and ``size``) unless the hub holds it;
    returns the bytes sent (0: it was there already). Resumes from the hub's offset.
    ``what`` names the bar; errors do not name the file (the caller knows which it is)."""
    first = transport.begin_upload(digest, size)
    if first["complete"]:
        return 0
    sent = 0

    def count(moved: int) -> None:
        nonlocal sent
        sent += moved
        meter.advance(moved)

    failures = 0
    state: UploadState | None = first
    with (
        open_file(path) as source,
        bars.meter(what or path.name, size, first["offset"]) as meter,
    ):
        while state is None or not state["complete"]:
            try:
                if state is None:  # after a failure: where does the hub stand now?
                    state = transport.begin_upload(digest, size)
                    continue
                offset = checked_offset(state, size)
                meter.move_to(offset)
                source.seek(offset)
                state = transport.send_upload(
                    state["upload_id"], offset, source, size - offset, count
                )
            except (Conflict, Unavailable) as exc:
                failures, state = _another_try(failures, exc), None
                continue
            if state["complete"] or state["offset"] > offset:
                failures = 0
            else:
                stuck = HiveMindError("the hub takes none of the bytes sent")
                failures = _another_try(failures, stuck, pause=False)
    return sent


def _another_try(failures: int, error: HiveMindError, pause: bool = True) -> int:
    """One more failure in a row: ``error`` once there are more than RETRIES, else the
    count, after RETRY_PAUSE seconds (a cut connection may take a moment to come back)."""
    failures += 1
    if failures > RETRIES:
        raise error
    if pause:
        time.sleep(RETRY_PAUSE)
    return failures


def checked_offset(state: UploadState, size: int) -> int:
    """Where to send from, if the hub's state allows going on."""
    offset = state["offset"]
    if not state["upload_id"] or not 0 <= offset < size or state["size"] != size:
        raise HiveMindError(
            f"the hub holds {format_bytes(offset)} of {format_bytes(size)} "
            "but did not complete the upload"
        )
    return offset


@contextlib.contextmanager
def open_file(path: Path) -> Iterator[BinaryIO]:
    try:
        source = path.open("rb")
    except OSError as exc:
        raise HiveMindError(f"cannot read {path}: {exc.strerror or exc}") from None
    with source:
        yield source


def download_result(
    source: ResultSource,
    task_id: str,
    digest: str,
    size: int,
    dest: Path,
    bars: Bars = QUIET,
) -> None:
    """The result zip of ``task_id`` (``digest``; ``size`` bytes, 0: unknown) into ``dest``,
    resumed from what ``dest`` holds, verified; a part that does not verify is removed."""
    with open_part(dest) as sink:
        held = sink.seek(0, os.SEEK_END)
        if size and held > size:
            held = sink.truncate(0)
        hasher = Hasher()
        if held:
            with bars.meter(f"checking {dest.name}", held) as meter:
                hasher = hash_prefix(sink, held, meter)
        with bars.meter(f"result of {task_id}", size, held) as meter:
            hasher = _receive(source, task_id, digest, size, sink, hasher, meter)
    if hasher.digest != digest:
        dest.unlink(missing_ok=True)
        raise InvalidInput(
            f"the result of {task_id} downloaded as {hasher.digest}, not {digest}: "
            "removed; run the command again"
        )


@contextlib.contextmanager
def open_part(dest: Path) -> Iterator[BinaryIO]:
    """The part file, new or from before, opened for reading and writing: never through a
    symlink, and only a regular file of the user's own. The ``-o`` directory may be shared
    (another user could plant ``.hivemind-result-<id>.zip.part`` there, as a link to a file
    of the user's, or a file of their own to read the result from)."""
    try:
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidInput(
                f"{dest} is a symbolic link, not a download of this command's: "
                "not writing through it; remove it or give -o another directory"
            ) from None
        raise HiveMindError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
            what = "a file of another user's" if stat.S_ISREG(found.st_mode) else "not a file"
            raise InvalidInput(
                f"{dest} is {what}, not a download of this command's: "
                "remove it or give -o another directory"
            )
        os.set_blocking(fd, True)
        sink = os.fdopen(fd, "r+b")
    except BaseException:
        os.close(fd)
        raise
    with sink:
        yield sink


def hash_prefix(sink: BinaryIO, held: int, meter: Meter) -> Hasher:
    """The hash of the first ``held`` bytes of the open part (not reopened by its name)."""
    hasher = Hasher()
    sink.seek(0)
    while hasher.size < held and (chunk := sink.read(min(CHUNK_BYTES, held - hasher.size))):
        hasher.update(chunk)
        meter.advance(len(chunk))
    return hasher


def _receive(
    source: ResultSource,
    task_id: str,
    digest: str,
    size: int,
    sink: BinaryIO,
    hasher: Hasher,
    meter: Meter,
) -> Hasher:
    """Append chunks to ``sink`` until the stream ends (or ``size`` is reached), retrying a
    cut stream from where it stopped; returns the hash of the whole file."""
    failures = 0
    while not size or hasher.size < size:
        try:
            stream = source.read_result(task_id, hasher.size, digest)
            if stream.start != hasher.size:  # sent whole: start again
                sink.truncate(0)
                hasher = Hasher()
                meter.move_to(0)
            sink.seek(hasher.size)
            for chunk in stream.chunks:
                if size and hasher.size + len(chunk) > size:
                    raise HiveMindError(f"the result of {task_id} is larger than {size} bytes")
                sink.write(chunk)
                hasher.update(chunk)
                meter.advance(len(chunk))
                failures = 0
            if not size or hasher.size == size:
                break
            raise Unavailable(f"the result of {task_id} stopped at {hasher.size} of {size} bytes")
        except Unavailable as exc:
            failures = _another_try(failures, exc)
    return hasher
