"""The blob store's files under its root: ``data/<hex[:2]>/<hex>`` (complete, verified,
read-only), ``uploads/<id>`` (partial), and ``.lock``, which a commit and a garbage deletion
hold so that a blob is never placed and removed at once (the web and the pool are two
processes on one directory)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hivemind_cluster.blobs.constants import DATA_DIR, LOCK_FILE, UPLOADS_DIR
from hivemind_cluster.core.errors import TooLarge, Unavailable
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.blobs import CHUNK_BYTES, DIGEST_PREFIX, Hasher, digest_hex

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class BlobFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / DATA_DIR
        self.uploads = root / UPLOADS_DIR
        for directory in (self.data, self.uploads):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        hex_digits = digest_hex(digest)
        return self.data / hex_digits[:2] / hex_digits

    def upload_path(self, upload_id: str) -> Path:
        if not UPLOAD_ID.match(upload_id):  # never a path of the caller's making
            raise ValueError(f"not an upload id: {upload_id[:40]!r}")
        return self.uploads / upload_id

    @contextmanager
    def store_lock(self) -> Iterator[None]:
        """Exclusive across threads and processes (each hold opens its own descriptor)."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def free_bytes(self) -> int:
        """Bytes free for the hub on the filesystem of the store's directory."""
        found = os.statvfs(self.root)
        return found.f_bavail * found.f_frsize

    def create_upload(self, upload_id: str) -> None:
        fd = os.open(self.upload_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)

    def remove_upload(self, upload_id: str) -> int:
        """Delete the partial file; the bytes it had (0 when it was not there)."""
        path = self.upload_path(upload_id)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    @staticmethod
    def seal(fd: int) -> None:
        """A verified partial file made durable and read-only (before ``place``: the
        store's lock is not held while its bytes reach the disk)."""
        os.fsync(fd)
        os.fchmod(fd, 0o444)

    def place(self, partial: Path, digest: str) -> None:
        """Make the sealed partial file the blob ``digest`` (call with ``store_lock``
        held): renamed into data/, or dropped when the blob is already there (the same
        bytes, verified when they were placed)."""
        target = self.blob_path(digest)
        if target.exists():
            partial.unlink()
            return
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(partial, target)
        _fsync_directory(target.parent)
        _fsync_directory(partial.parent)

    def remove_blob(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    def blob_files(self) -> Iterator[tuple[str, Path]]:
        """(digest, path) of every file in data/ named like a blob."""
        for directory in sorted(self.data.iterdir()):
            for path in sorted(directory.iterdir()) if directory.is_dir() else ():
                if _HEX.match(path.name) and path.name[:2] == directory.name:
                    yield DIGEST_PREFIX + path.name, path

    def upload_files(self) -> Iterator[tuple[str, Path]]:
        """(upload id, path) of every file in uploads/ named like an upload."""
        for path in sorted(self.uploads.iterdir()):
            if UPLOAD_ID.match(path.name):
                yield path.name, path


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Written data is flushed to the disk every so often as it arrives: otherwise gigabytes of
# dirty pages pile up and the kernel throttles every writer on the machine at once —
# Redis's AOF among them, which then stops answering the pool and the web for seconds. The
# disk is many times faster than the network the bytes come over, so this costs little.
FLUSH_EVERY_BYTES = 64 * 1024 * 1024


def write_chunks(fd: int, hasher: Hasher, size: int, chunks: Iterable[bytes], what: str) -> None:
    """Append ``chunks`` to the file at ``fd``, which holds ``hasher.size`` bytes, hashing
    them as they go. Reads no chunk more once ``size`` is reached, except to see that no byte
    more comes (TooLarge the moment one would pass ``size``). On a failure the file is cut
    back to the bytes hashed, so that file and hasher always agree."""
    try:
        stream = iter(chunks)
        while hasher.size < size:
            chunk = next(stream, None)
            if chunk is None:
                return
            if hasher.size + len(chunk) > size:
                raise _too_large(what, size)
            _write(fd, hasher, chunk)
        if any(extra for extra in stream):
            raise _too_large(what, size)
    except OSError as exc:
        os.ftruncate(fd, hasher.size)
        if exc.errno in _FULL_DISK:
            raise Unavailable("the hub's blob storage is full: try again later") from None
        raise
    except BaseException:
        os.ftruncate(fd, hasher.size)
        raise


def _write(fd: int, hasher: Hasher, chunk: bytes) -> None:
    view = memoryview(chunk)
    for start in range(0, len(view), CHUNK_BYTES):
        piece = view[start : start + CHUNK_BYTES]
        written = 0
        while written < len(piece):
            written += os.pwrite(fd, piece[written:], hasher.size + written)
        before = hasher.size
        hasher.update(piece)
        if before // FLUSH_EVERY_BYTES != hasher.size // FLUSH_EVERY_BYTES:
            os.fdatasync(fd)


def _too_large(what: str, size: int) -> TooLarge:
    return TooLarge(
        f"{what}: more bytes than the announced {format_bytes(size)} ({size} bytes); "
        "nothing was stored"
    )
