"""The hub's blob store on a real Redis and a real directory: chunked, resumable uploads
(also from a second ``BlobStore``, as the other hub process would be), verification, limits
and quota, sharing one stored copy, pins, results, reads and garbage collection."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hivemind_cluster.blobs import constants as keys
from hivemind_cluster.blobs.index import UploadRecord
from hivemind_cluster.blobs.store import BlobLimits, BlobStore, UploadState
from hivemind_cluster.core.errors import Conflict, InvalidInput, NotFound, TooLarge
from hivemind_cluster.model.blobs import CHUNK_BYTES

pytestmark = pytest.mark.privileged
DAY = 86400
LIMITS = BlobLimits(
    max_input_bytes=8 * CHUNK_BYTES,
    max_result_bytes=4 * CHUNK_BYTES,
    quota_bytes=10 * CHUNK_BYTES,
    upload_retention_seconds=7 * DAY,
    result_retention_seconds=3 * DAY,
)
ALICE, BOB = "user:alice", "user:bob"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def store(client: redis.Redis, root: Path, clock: Clock) -> BlobStore:
    return BlobStore(root, client, LIMITS, clock)


@pytest.fixture
def other_process(client: redis.Redis, root: Path, clock: Clock) -> BlobStore:
    """A second store on the same directory and Redis: no hasher, no thread lock shared."""
    return BlobStore(root, client, LIMITS, clock)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def upload(store: BlobStore, account: str, data: bytes, announce: bool = True) -> UploadState:
    state = store.begin_upload(account, len(data), digest_of(data) if announce else "")
    if state.complete:
        return state
    return store.append(account, state.upload_id, state.offset, pieces(data[state.offset :]))


def blob_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / keys.DATA_DIR).rglob("*") if path.is_file())


def partial_files(root: Path) -> list[Path]:
    return sorted((root / keys.UPLOADS_DIR).iterdir())


def nothing_stored(store: BlobStore, root: Path, client: redis.Redis) -> None:
    assert blob_files(root) == [] and partial_files(root) == []
    assert client.hlen(keys.BLOBS) == 0 and client.zcard(keys.UPLOADS) == 0
    assert store.usage(ALICE) == (0, LIMITS.quota_bytes)


def test_an_upload_resumes_at_any_offset_also_in_another_process(
    store: BlobStore, other_process: BlobStore, root: Path
) -> None:
    data = payload(3 * CHUNK_BYTES + 12345)
    cut = random.Random(7).randrange(1, len(data))
    begun = store.begin_upload(ALICE, len(data), digest_of(data))
    assert (begun.offset, begun.complete) == (0, False) and begun.upload_id
    first = store.append(ALICE, begun.upload_id, 0, pieces(data[:cut], 65536))
    assert (first.offset, first.complete) == (cut, False)
    # The other process has no hasher for it: it hashes the partial file, then goes on.
    assert other_process.upload_state(ALICE, begun.upload_id).offset == cut
    assert other_process.begin_upload(ALICE, len(data), digest_of(data)) == first
    done = other_process.append(ALICE, begun.upload_id, cut, pieces(data[cut:]))
    assert done == UploadState("", len(data), len(data), digest_of(data), True)
    [path] = blob_files(root)
    assert path == store.path(digest_of(data)) and path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444 and partial_files(root) == []
    assert store.holds(ALICE, digest_of(data)) and not store.holds(BOB, digest_of(data))
    assert store.usage(ALICE) == (len(data), LIMITS.quota_bytes)
    # A client that lost the last reply asks again: complete, with the digest.
    assert store.upload_state(ALICE, begun.upload_id).complete


def test_an_append_at_another_offset_is_a_conflict_that_says_the_held_one(
    store: BlobStore,
) -> None:
    data = payload(2 * CHUNK_BYTES)
    begun = store.begin_upload(ALICE, len(data), digest_of(data))
    store.append(ALICE, begun.upload_id, 0, [data[:1000]])
    with pytest.raises(Conflict, match=r"at offset 1000 .*resume from 1000"):
        store.append(ALICE, begun.upload_id, 0, [data])
    assert store.append(ALICE, begun.upload_id, 1000, [data[1000:]]).complete


def test_bytes_that_are_not_the_announced_digest_store_nothing(
    store: BlobStore, root: Path, client: redis.Redis
) -> None:
    data = payload(CHUNK_BYTES + 1)
    begun = store.begin_upload(ALICE, len(data), digest_of(b"something else"))
    with pytest.raises(InvalidInput, match=r"not the announced .*nothing was stored"):
        store.append(ALICE, begun.upload_id, 0, pieces(data))
    nothing_stored(store, root, client)
    with pytest.raises(NotFound):
        store.upload_state(ALICE, begun.upload_id)


def test_an_upload_stops_reading_the_moment_it_passes_its_size(
    store: BlobStore, root: Path, client: redis.Redis
) -> None:
    pulled = []

    def endless() -> Iterator[bytes]:
        while True:
            pulled.append(1)
            yield b"x" * CHUNK_BYTES

    begun = store.begin_upload(ALICE, 2 * CHUNK_BYTES + 10)
    with pytest.raises(TooLarge, match="more bytes than the announced 2 MiB"):
        store.append(ALICE, begun.upload_id, 0, endless())
    assert len(pulled) == 3  # the third chunk would pass the size: not one more is read
    nothing_stored(store, root, client)
    exact = store.begin_upload(ALICE, 5)
    with pytest.raises(TooLarge):  # the right bytes, then one more
        store.append(ALICE, exact.upload_id, 0, [b"12345", b"6"])
    nothing_stored(store, root, client)


def test_limits_and_the_quota(store: BlobStore) -> None:
    with pytest.raises(TooLarge, match="over the hub's limit of 8 MiB"):
        store.begin_upload(ALICE, LIMITS.max_input_bytes + 1)
    with pytest.raises(InvalidInput, match="is not sha256"):
        store.begin_upload(ALICE, 10, "md5:abc")
    upload(store, ALICE, payload(6 * CHUNK_BYTES))
    store.begin_upload(ALICE, 3 * CHUNK_BYTES)  # unfinished: counts at its announced size
    with pytest.raises(
        TooLarge, match=r"storage quota: 9 MiB of 10 MiB used.* 2 MiB more .*expires after 7 days"
    ):
        store.begin_upload(ALICE, 2 * CHUNK_BYTES)
    assert store.usage(ALICE) == (9 * CHUNK_BYTES, LIMITS.quota_bytes)
    assert store.begin_upload(BOB, 2 * CHUNK_BYTES).upload_id  # Bob's quota is his own


def test_one_stored_copy_but_every_account_proves_it_has_the_bytes(
    store: BlobStore, root: Path, client: redis.Redis
) -> None:
    data = payload(CHUNK_BYTES + 5)
    upload(store, ALICE, data)
    again = store.begin_upload(ALICE, len(data), digest_of(data))
    assert again == UploadState("", len(data), len(data), digest_of(data), True)
    bobs = store.begin_upload(BOB, len(data), digest_of(data))
    assert (bobs.complete, bobs.offset) == (False, 0) and not store.holds(BOB, digest_of(data))
    store.append(BOB, bobs.upload_id, 0, pieces(data))
    browsers = upload(store, "user:carol", data, announce=False)  # no digest announced
    assert browsers.digest == digest_of(data)
    assert [path.read_bytes() for path in blob_files(root)] == [data]
    assert all(store.holds(who, digest_of(data)) for who in (ALICE, BOB, "user:carol"))
    assert partial_files(root) == [] and client.hlen(keys.BLOBS) == 1
    with pytest.raises(InvalidInput, match=r"is 1 MiB \(1048581 bytes\) on the hub, not 3 bytes"):
        store.begin_upload(ALICE, 3, digest_of(data))


def test_an_empty_upload_is_complete_at_once(store: BlobStore) -> None:
    state = store.begin_upload(ALICE, 0, digest_of(b""))
    assert state.complete and store.size(digest_of(b"")) == 0
    assert list(store.read(digest_of(b""))) == []


def test_uploads_are_the_accounts_own(store: BlobStore) -> None:
    begun = store.begin_upload(ALICE, 10)
    for account, upload_id in ((BOB, begun.upload_id), (ALICE, "../../etc"), (ALICE, "0" * 32)):
        with pytest.raises(NotFound, match="is not on the hub"):
            store.upload_state(account, upload_id)
        with pytest.raises(NotFound):
            store.append(account, upload_id, 0, [b"x"])


def test_a_cancelled_upload_frees_its_quota_and_only_its_owner_can_cancel_it(
    store: BlobStore, other_process: BlobStore, root: Path, client: redis.Redis
) -> None:
    data = payload(3 * CHUNK_BYTES)
    begun = store.begin_upload(ALICE, len(data), digest_of(data))
    store.append(ALICE, begun.upload_id, 0, [data[:CHUNK_BYTES]])
    assert store.usage(ALICE)[0] == len(data)  # an unfinished upload counts at its size
    for account, upload_id in ((BOB, begun.upload_id), (ALICE, "0" * 32), (ALICE, "../x")):
        with pytest.raises(NotFound, match="is not on the hub"):
            store.cancel_upload(account, upload_id)
    other_process.cancel_upload(ALICE, begun.upload_id)  # no hasher there: it goes all the same
    nothing_stored(store, root, client)
    with pytest.raises(NotFound):
        store.cancel_upload(ALICE, begun.upload_id)
    with pytest.raises(NotFound):
        store.append(ALICE, begun.upload_id, CHUNK_BYTES, [data[CHUNK_BYTES:]])
    again = store.begin_upload(ALICE, len(data), digest_of(data))  # not a resume: from 0
    assert again.upload_id != begun.upload_id and again.offset == 0
    done = store.append(ALICE, again.upload_id, 0, pieces(data))
    with pytest.raises(NotFound):  # complete: a holding now, not an upload to give up
        store.cancel_upload(ALICE, again.upload_id)
    assert done.complete and store.holds(ALICE, digest_of(data))


def test_read_from_an_offset(store: BlobStore) -> None:
    data = payload(2 * CHUNK_BYTES + 99)
    digest = upload(store, ALICE, data).digest
    for offset in (0, 1, CHUNK_BYTES + 3, len(data)):
        chunks = list(store.read(digest, offset))
        assert b"".join(chunks) == data[offset:] and all(len(c) <= CHUNK_BYTES for c in chunks)
    with pytest.raises(InvalidInput, match="outside"):
        store.read(digest, len(data) + 1)
    with pytest.raises(NotFound):
        store.read(digest_of(b"nope"))


def test_pins_are_all_or_nothing_and_the_task_end_releases_them(
    store: BlobStore, client: redis.Redis, clock: Clock
) -> None:
    held, missing = upload(store, ALICE, b"held").digest, digest_of(b"never uploaded")
    with pytest.raises(NotFound, match=f"input {missing} is not on the hub: upload it first"):
        store.pin_inputs("t1", ALICE, [held, missing])
    assert client.hlen(keys.PINS.format(digest=held)) == 0
    with pytest.raises(NotFound):  # held by Alice, not by Bob
        store.pin_inputs("t1", BOB, [held])
    assert store.pin_inputs("t1", ALICE, [held, held]) == {held: 4}
    assert list(client.hkeys(keys.PINS.format(digest=held))) == ["t1"]
    clock.now += 6 * DAY
    store.release_task("t1", ALICE, [held])
    assert client.hlen(keys.PINS.format(digest=held)) == 0
    clock.now += 6 * DAY  # kept a retention from the task's end, not from the upload
    assert store.holds(ALICE, held)
    clock.now += 2 * DAY
    assert not store.holds(ALICE, held)


def never_live(tasks: list[str]) -> list[bool]:
    return [False] * len(tasks)


def always_live(tasks: list[str]) -> list[bool]:
    return [True] * len(tasks)


def test_garbage_is_what_nobody_holds_and_no_live_task_pins(
    store: BlobStore, root: Path, client: redis.Redis, clock: Clock
) -> None:
    lone, shared, pinned = (payload(1000, seed) for seed in (1, 2, 3))
    for data in (lone, shared, pinned):
        upload(store, ALICE, data)
    store.pin_inputs("t1", ALICE, [digest_of(pinned)])
    assert store.collect_garbage(never_live) == (0, 0)
    clock.now += 3 * DAY
    upload(store, BOB, shared)  # Bob's holding outlives Alice's
    clock.now += 5 * DAY
    asked: list[list[str]] = []

    def live(tasks: list[str]) -> list[bool]:
        asked.append(tasks)
        return always_live(tasks)

    assert store.collect_garbage(live) == (1, 1000)
    assert asked == [["t1"]]
    with pytest.raises(NotFound):
        store.path(digest_of(lone))
    assert len(blob_files(root)) == 2 and store.holds(BOB, digest_of(shared))
    assert store.collect_garbage(never_live) == (1, 1000)  # t1 ended: its pin was stale
    assert client.exists(keys.PINS.format(digest=digest_of(pinned))) == 0
    assert [path.read_bytes() for path in blob_files(root)] == [shared]
    # What is removed can come back: the same bytes again make a new file.
    upload(store, ALICE, lone)
    assert store.path(digest_of(lone)).read_bytes() == lone


def test_garbage_takes_stale_uploads_and_unknown_files(
    store: BlobStore, root: Path, client: redis.Redis, clock: Clock
) -> None:
    stale = store.begin_upload(ALICE, 100)
    store.append(ALICE, stale.upload_id, 0, [b"x" * 40])
    clock.now += 8 * DAY
    fresh = store.begin_upload(ALICE, 100)
    orphan = store.files.blob_path(digest_of(b"orphan"))  # placed, never recorded (a crash)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    stray = root / keys.UPLOADS_DIR / ("f" * 32)  # created, never recorded
    stray.write_bytes(b"st")
    os.utime(stray, (clock.now - 8 * DAY, clock.now - 8 * DAY))
    assert store.collect_garbage(never_live) == (1, 6 + 40 + 2)
    assert blob_files(root) == [] and partial_files(root) == [root / "uploads" / fresh.upload_id]
    with pytest.raises(NotFound):
        store.upload_state(ALICE, stale.upload_id)
    assert store.usage(ALICE)[0] == 100 and client.zcard(keys.UPLOADS) == 1


def test_garbage_keeps_a_file_whose_commit_is_under_way(
    store: BlobStore, other_process: BlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector sees the placed but not yet recorded file, then waits for the commit's
    lock and finds it recorded: the file stays."""
    data = b"committing"
    looked = threading.Event()
    real_size = other_process.index.size

    def size_and_tell(digest: str) -> int | None:
        found = real_size(digest)
        looked.set()
        return found

    monkeypatch.setattr(other_process.index, "size", size_and_tell)
    real_commit = store.index.commit
    collected: list[tuple[int, int]] = []
    collector = threading.Thread(
        target=lambda: collected.append(other_process.collect_garbage(never_live))
    )

    def commit_while_collecting(
        record: UploadRecord, digest: str, now: float, expiry: float, keep_seconds: int
    ) -> None:
        collector.start()
        looked.wait()  # it saw the file unrecorded; now it waits for the lock this holds
        real_commit(record, digest, now, expiry, keep_seconds)

    monkeypatch.setattr(store.index, "commit", commit_while_collecting)
    upload(store, ALICE, data)
    collector.join()
    assert collected == [(0, 0)] and [p.read_bytes() for p in blob_files(root)] == [data]


def test_results_begin_append_resume_and_ready(
    store: BlobStore, other_process: BlobStore, root: Path, clock: Clock
) -> None:
    data = payload(2 * CHUNK_BYTES + 7)
    digest, size = digest_of(data), len(data)
    with pytest.raises(TooLarge, match="a result of 5 MiB"):
        store.begin_result("t1", 1, digest, 5 * CHUNK_BYTES)
    begun = store.begin_result("t1", 1, digest, size)
    store.append_result("t1", 1, 0, [data[:CHUNK_BYTES]])
    assert store.begin_result("t1", 1, digest, size) == UploadState(
        begun.upload_id, CHUNK_BYTES, size, digest, False
    )
    assert not store.result_ready("t1", 1, digest, size)
    with pytest.raises(NotFound, match="no result upload"):
        store.append_result("t1", 2, 0, [data])
    with pytest.raises(NotFound):  # a result upload is no account's upload
        store.upload_state("result:t1", begun.upload_id)
    done = other_process.append_result("t1", 1, CHUNK_BYTES, [data[CHUNK_BYTES:]])
    assert done.complete and store.result_ready("t1", 1, digest, size)
    assert not store.result_ready("t1", 2, digest, size)
    assert store.begin_result("t1", 1, digest, size).complete
    assert store.path(digest).read_bytes() == data
    # Another result of the same attempt replaces the unfinished one.
    first = store.begin_result("t2", 1, digest_of(b"a"), 1)
    second = store.begin_result("t2", 1, digest_of(b"bb"), 2)
    assert second.upload_id != first.upload_id and len(partial_files(root)) == 1
    # Kept for result_retention_seconds after the task ended, then collected.
    store.release_task("t1", ALICE, [], digest)
    clock.now += 2 * DAY
    assert store.collect_garbage(never_live)[0] == 0
    clock.now += 2 * DAY
    assert store.collect_garbage(never_live)[0] == 1


def test_appends_to_one_upload_never_interleave(
    store: BlobStore, other_process: BlobStore, root: Path
) -> None:
    data = payload(3 * CHUNK_BYTES)
    begun = store.begin_upload(ALICE, len(data), digest_of(data))
    store.locks.wait_seconds = other_process.locks.wait_seconds = 0.1
    refused: list[str] = []

    def meddling() -> Iterator[bytes]:
        yield data[:CHUNK_BYTES]
        for writer in (store, other_process):  # another thread's lock, another process's
            with pytest.raises(Conflict, match="being written by another request") as error:
                writer.append(ALICE, begun.upload_id, CHUNK_BYTES, [b"z" * CHUNK_BYTES])
            refused.append(str(error.value))

    assert store.append(ALICE, begun.upload_id, 0, meddling()).offset == CHUNK_BYTES
    assert len(refused) == 2
    assert upload(store, ALICE, data).complete
    assert store.path(digest_of(data)).read_bytes() == data


def test_two_threads_sending_different_bytes_store_one_of_them_whole(
    store: BlobStore, other_process: BlobStore
) -> None:
    first, second = payload(4 * CHUNK_BYTES, 1), payload(4 * CHUNK_BYTES, 2)
    begun = store.begin_upload(ALICE, len(first))  # a browser's: no digest announced
    states: list[UploadState] = []
    threads = [
        threading.Thread(
            target=lambda w=writer, d=data: states.append(
                w.append(ALICE, begun.upload_id, 0, pieces(d, 65536))
            )
        )
        for writer, data in ((store, first), (other_process, second))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(states) == 2 and all(state.complete for state in states)
    assert states[0].digest == states[1].digest in (digest_of(first), digest_of(second))
    assert store.path(states[0].digest).read_bytes() in (first, second)
