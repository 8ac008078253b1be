"""The blob store's file side without Redis: writing chunks (limits, failures), the
per-upload lock, the hash states kept between appends, and the store's file layout; and how
the pool feeds it a stream (batches, threads)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hivemind_cluster.blobs.files import BlobFiles, write_chunks
from hivemind_cluster.blobs.states import UploadState
from hivemind_cluster.blobs.uploads import MAX_HASHERS, Hashers, UploadLocks
from hivemind_cluster.core.errors import Conflict, TooLarge, Unavailable
from hivemind_cluster.model.blobs import CHUNK_BYTES, Hasher
from hivemind_cluster.pool.blobservice import WRITE_BYTES, append_stream
from hivemind_cluster.pool.taskdata import STORE_THREADS, in_store_thread

UPLOAD = "0123456789abcdef" * 2


@pytest.fixture
def files(tmp_path: Path) -> BlobFiles:
    return BlobFiles(tmp_path / "blobs")


def opened(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def test_chunks_are_written_and_hashed_up_to_the_size(tmp_path: Path) -> None:
    fd, hasher = opened(tmp_path / "part"), Hasher()
    big = os.urandom(2 * CHUNK_BYTES + 3)  # one chunk larger than CHUNK_BYTES: split
    write_chunks(fd, hasher, len(big) + 2, [b"", big, b"ab"], "upload x")
    os.close(fd)
    assert (tmp_path / "part").read_bytes() == big + b"ab"
    assert hasher.digest == "sha256:" + hashlib.sha256(big + b"ab").hexdigest()


def test_no_chunk_is_read_past_the_size(tmp_path: Path) -> None:
    fd, hasher, pulled = opened(tmp_path / "part"), Hasher(), []

    def chunks() -> Iterator[bytes]:
        for n in range(10):
            pulled.append(n)
            yield b"12345"

    with pytest.raises(TooLarge, match=r"more bytes than the announced 12 B \(12 bytes\)"):
        write_chunks(fd, hasher, 12, chunks(), "upload x")
    assert pulled == [0, 1, 2] and os.fstat(fd).st_size == 10 == hasher.size
    os.close(fd)


def test_a_failed_append_leaves_the_file_as_its_hash_saw_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, hasher = opened(tmp_path / "part"), Hasher()

    def cut_off() -> Iterator[bytes]:
        yield b"kept"
        raise ConnectionError("the client went away")

    with pytest.raises(ConnectionError):
        write_chunks(fd, hasher, 100, cut_off(), "upload x")
    assert os.fstat(fd).st_size == hasher.size == 4
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: bytes | memoryview, offset: int) -> int:
        if offset > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data[: len(data) // 2], offset)

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(Unavailable, match="blob storage is full"):
        write_chunks(fd, hasher, 100, [b"more"], "upload x")
    assert os.fstat(fd).st_size == hasher.size == 4
    os.close(fd)


def test_one_writer_per_upload(files: BlobFiles) -> None:
    files.create_upload(UPLOAD)
    path = files.upload_path(UPLOAD)
    here, elsewhere = UploadLocks(0), UploadLocks(0)  # this process's, another's
    with here.hold(UPLOAD, path) as fd:
        assert fd is not None
        for locks in (here, elsewhere):
            with (
                pytest.raises(Conflict, match="being written by another request"),
                locks.hold(UPLOAD, path, wait=False),
            ):
                pass
    with elsewhere.hold(UPLOAD, path) as fd:
        assert fd is not None
    files.remove_upload(UPLOAD)
    with here.hold(UPLOAD, path) as fd:
        assert fd is None  # no such file: the upload is over


def test_hash_states_are_only_for_the_bytes_they_saw() -> None:
    hashers = Hashers()
    hasher = Hasher()
    hasher.update(b"abc")
    hashers.keep("u", hasher)
    assert hashers.take("u", 4) is None  # the file has a byte this state never saw
    hashers.keep("u", hasher)
    assert hashers.take("u", 3) is hasher and hashers.take("u", 3) is None  # taken
    for n in range(MAX_HASHERS + 1):
        hashers.keep(str(n), Hasher())
    assert hashers.take("0", 0) is None and hashers.take(str(MAX_HASHERS), 0) is not None


def test_the_layout(files: BlobFiles, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        files.upload_path("../../x")
    digest = "sha256:" + hashlib.sha256(b"data").hexdigest()
    assert files.blob_path(digest) == files.data / digest[7:9] / digest[7:]
    for upload_id in (UPLOAD, "f" * 32):
        files.create_upload(upload_id)
        files.upload_path(upload_id).write_bytes(b"data")
    (files.uploads / "not-an-upload").write_bytes(b"")
    assert [i for i, _ in files.upload_files()] == [UPLOAD, "f" * 32]
    for upload_id in (UPLOAD, "f" * 32):  # the second finds the blob there: dropped
        fd = os.open(files.upload_path(upload_id), os.O_RDWR)
        files.seal(fd)
        os.close(fd)
        files.place(files.upload_path(upload_id), digest)
    assert list(files.upload_files()) == [] and list(files.blob_files()) == [
        (digest, files.blob_path(digest))
    ]
    assert stat.S_IMODE(files.blob_path(digest).stat().st_mode) == 0o444


def test_the_pool_appends_a_stream_in_small_batches_on_the_stores_own_threads() -> None:
    """Many uploads at once stay within the hub's memory: each gathers at most WRITE_BYTES
    (2 MiB) before an append, and the appends run on the store's few threads."""
    batches: list[int] = []
    threads: set[str] = set()

    def store_append(offset: int, chunks: list[bytes]) -> UploadState:
        threads.add(threading.current_thread().name)
        batches.append(sum(map(len, chunks)))
        return UploadState("u", offset + batches[-1], 10 * CHUNK_BYTES, "", False)

    async def append(offset: int, chunks: list[bytes]) -> UploadState:
        return await in_store_thread(store_append, offset, chunks)

    async def rest() -> AsyncIterator[Any]:
        for _ in range(9):
            yield SimpleNamespace(offset=0, data=b"x" * CHUNK_BYTES)

    async def go() -> list[UploadState | None]:
        streams = [append_stream(0, b"x" * CHUNK_BYTES, rest(), append) for _ in range(8)]
        return await asyncio.gather(*streams)

    states = asyncio.run(go())
    assert all(state is not None and state.offset == 10 * CHUNK_BYTES for state in states)
    assert max(batches) <= 2 * CHUNK_BYTES == WRITE_BYTES and sum(batches) == 80 * CHUNK_BYTES
    assert len(threads) <= STORE_THREADS
    assert all(name.startswith("hivemind-blob-store") for name in threads)
