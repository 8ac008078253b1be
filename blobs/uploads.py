"""What an upload needs beside its file: a lock that keeps two appends apart (threads of one
process, and the web and the pool, which are two processes), and the running SHA-256 of its
bytes so far, so that each append hashes only the bytes it brings."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hivemind_cluster.core.errors import Conflict
from hivemind_cluster.model.blobs import Hasher

_POLL_SECONDS = 0.05
MAX_HASHERS = 256  # open uploads whose hash state a process keeps (others are re-hashed)


def busy(upload_id: str) -> Conflict:
    return Conflict(
        f"upload {upload_id} is being written by another request: "
        "ask for its offset and resume from there"
    )


class UploadLocks:
    """One writer per upload: a threading lock per upload id (waiters in this process), then
    ``flock`` on the partial file itself (the other process). Waits up to ``wait_seconds``,
    then Conflict."""

    def __init__(self, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, upload_id: str, path: Path, wait: bool = True) -> Iterator[int | None]:
        """The partial file's descriptor (read-write), locked; None when there is no such
        file (or it was renamed or removed while this waited). Conflict after waiting
        ``wait_seconds`` (at once unless ``wait``)."""
        deadline = time.monotonic() + (self.wait_seconds if wait else 0)
        lock = self._enter(upload_id)
        try:
            if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise busy(upload_id)
            try:
                fd = _open_locked(upload_id, path, deadline)
                try:
                    yield fd
                finally:
                    if fd is not None:
                        os.close(fd)
            finally:
                lock.release()
        finally:
            self._leave(upload_id)

    def _enter(self, upload_id: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(upload_id, (threading.Lock(), 0))
            self._locks[upload_id] = (lock, users + 1)
            return lock

    def _leave(self, upload_id: str) -> None:
        with self._guard:
            lock, users = self._locks[upload_id]
            if users > 1:
                self._locks[upload_id] = (lock, users - 1)
            else:
                del self._locks[upload_id]


def _open_locked(upload_id: str, path: Path, deadline: float) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy(upload_id) from None
                time.sleep(_POLL_SECONDS)
    except BaseException:
        os.close(fd)
        raise
    if _same_file(fd, path):
        return fd
    os.close(fd)  # renamed into data/ or removed while this waited
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class Hashers:
    """The SHA-256 state of open uploads in this process, the least recently used dropped
    beyond ``MAX_HASHERS``. A state is only good for the exact bytes it has seen: ``take``
    returns it when its size is the file's, else None (hash the file again)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._hashers: OrderedDict[str, Hasher] = OrderedDict()

    def take(self, upload_id: str, size: int) -> Hasher | None:
        with self._guard:
            hasher = self._hashers.pop(upload_id, None)
        return hasher if hasher is not None and hasher.size == size else None

    def keep(self, upload_id: str, hasher: Hasher) -> None:
        with self._guard:
            self._hashers[upload_id] = hasher
            self._hashers.move_to_end(upload_id)
            while len(self._hashers) > MAX_HASHERS:
                self._hashers.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        with self._guard:
            self._hashers.pop(upload_id, None)
