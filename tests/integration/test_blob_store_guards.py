"""The blob store's guards on a real Redis: an upload a crash left with every byte but no
commit, one result per attempt, the disk's free space, the quota of pinned inputs, the pin
grace the garbage collector gives a submission, the cap on an account's blobs, and a result
committed after its task was released."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis

from hivemind_cluster.blobs import constants as keys
from hivemind_cluster.blobs import store as blob_store
from hivemind_cluster.blobs.store import BlobLimits, BlobStore
from hivemind_cluster.core.errors import Conflict, InvalidInput, TooLarge, Unavailable
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.blobs import CHUNK_BYTES
from tests.integration.test_blob_store import (
    ALICE,
    DAY,
    LIMITS,
    Clock,
    digest_of,
    never_live,
    partial_files,
    payload,
    pieces,
    upload,
)

pytestmark = pytest.mark.privileged


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def store(client: redis.Redis, root: Path, clock: Clock) -> BlobStore:
    return BlobStore(root, client, LIMITS, clock)


def with_limits(store: BlobStore, **changes: int) -> BlobStore:
    """Another process's store on the same directory and Redis, with other limits."""
    limits = dataclasses.replace(LIMITS, **changes)
    return BlobStore(store.files.root, store.index.db, limits, store.clock)


def written_behind_its_back(store: BlobStore, upload_id: str, data: bytes) -> None:
    """Every byte in the partial file, no commit: the hub stopped between the two."""
    store.files.upload_path(upload_id).write_bytes(data)


def test_an_upload_a_crash_left_with_every_byte_is_committed_when_asked_about(
    store: BlobStore, root: Path
) -> None:
    for seed, ask in ((1, "state"), (2, "begin")):
        data = payload(CHUNK_BYTES + 3, seed)
        begun = store.begin_upload(ALICE, len(data), digest_of(data))
        written_behind_its_back(store, begun.upload_id, data)
        again = with_limits(store)  # another process: no hasher, it hashes the file
        if ask == "state":
            state = again.upload_state(ALICE, begun.upload_id)
        else:
            state = again.begin_upload(ALICE, len(data), digest_of(data))
        assert state.complete and state.digest == digest_of(data)
        assert store.holds(ALICE, digest_of(data))
        assert store.path(digest_of(data)).read_bytes() == data
    result = payload(2 * CHUNK_BYTES, 3)
    begun = store.begin_result("t1", 1, digest_of(result), len(result))
    written_behind_its_back(store, begun.upload_id, result)
    assert store.begin_result("t1", 1, digest_of(result), len(result)).complete
    assert store.result_ready("t1", 1, digest_of(result), len(result))
    assert partial_files(root) == []


def test_an_attempt_writes_one_result(store: BlobStore) -> None:
    first, second = b"first result", b"another result"
    begun = store.begin_result("t1", 1, digest_of(first), len(first))
    assert store.append_result("t1", 1, begun.offset, [first]).complete
    with pytest.raises(Conflict, match=r"wrote its result already .*an attempt writes one"):
        store.begin_result("t1", 1, digest_of(second), len(second))
    with pytest.raises(Conflict):  # the same digest, another size
        store.begin_result("t1", 1, digest_of(first), len(first) + 1)
    assert store.begin_result("t1", 1, digest_of(first), len(first)).complete
    assert store.begin_result("t1", 2, digest_of(second), len(second)).upload_id


def test_nothing_begins_that_the_hubs_disk_has_no_room_for(
    store: BlobStore, root: Path, client: redis.Redis
) -> None:
    held = upload(store, ALICE, b"held already").digest
    full = with_limits(store, disk_margin_bytes=1 << 60)
    with pytest.raises(Unavailable, match=r"the hub's disk has .* free, and this upload needs"):
        full.begin_upload(ALICE, 100, digest_of(b"x" * 100))
    with pytest.raises(Unavailable, match="the hub's disk has"):
        full.begin_result("t1", 1, digest_of(b"r"), 1)
    assert partial_files(root) == [] and client.zcard(keys.UPLOADS) == 0
    assert full.usage(ALICE)[0] == len(b"held already")
    assert full.begin_upload(ALICE, len(b"held already"), held).complete  # nothing to write


def test_inputs_a_running_task_pins_count_toward_the_quota_after_their_holding_lapses(
    store: BlobStore, clock: Clock
) -> None:
    data = payload(6 * CHUNK_BYTES)
    digest = upload(store, ALICE, data).digest
    store.pin_inputs("t1", ALICE, [digest])
    clock.now += 30 * DAY  # a long task: the holding lapsed, the pin holds
    assert not store.holds(ALICE, digest)
    assert store.usage(ALICE)[0] == len(data)
    with pytest.raises(TooLarge, match="storage quota: 6 MiB of 10 MiB used"):
        store.begin_upload(ALICE, 5 * CHUNK_BYTES)
    store.release_task("t1", ALICE, [digest])
    assert store.usage(ALICE)[0] == len(data) and store.holds(ALICE, digest)
    clock.now += 8 * DAY
    assert store.usage(ALICE)[0] == 0


def test_a_young_pin_holds_though_its_task_is_not_stored_yet(
    store: BlobStore, clock: Clock
) -> None:
    quick = with_limits(store, upload_retention_seconds=60)  # made directly: no lower bound
    digest = upload(quick, ALICE, b"pinned before its task is stored").digest
    quick.pin_inputs("t1", ALICE, [digest])
    clock.now += 120  # unheld; the pin is younger than the grace, its task "not live"
    assert quick.collect_garbage(never_live) == (0, 0)
    assert quick.size(digest)
    clock.now += 600
    assert quick.collect_garbage(never_live)[0] == 1
    with pytest.raises(InvalidInput, match="upload_retention_seconds is 60: it must be at least"):
        BlobLimits.from_settings(HubSettings("/nonexistent", upload_retention_seconds=60))
    with pytest.raises(InvalidInput, match="result_retention_seconds is 59"):
        BlobLimits.from_settings(HubSettings("/nonexistent", result_retention_seconds=59))


def test_an_account_holds_a_bounded_number_of_blobs(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blob_store, "MAX_ACCOUNT_BLOBS", 2)
    digests = [upload(store, ALICE, bytes([n])).digest for n in range(2)]
    with pytest.raises(TooLarge, match="2 blobs held, the most an account may hold is 2"):
        store.begin_upload(ALICE, 1, digest_of(b"\2"))
    assert store.begin_upload(ALICE, 1, digests[0]).complete  # held: no new blob


def test_a_result_committed_after_its_task_was_released_is_not_kept(
    store: BlobStore, clock: Clock
) -> None:
    late = payload(CHUNK_BYTES + 1)
    begun = store.begin_result("t1", 1, digest_of(late), len(late))
    store.append_result("t1", 1, 0, [late[:100]])
    store.release_task("t1", ALICE, [])  # the task ended (cancelled) with no result
    assert store.append_result("t1", 1, 100, pieces(late[100:])).complete
    assert begun.upload_id and store.collect_garbage(never_live) == (1, len(late))
    kept = b"the result the task kept"
    store.begin_result("t2", 1, digest_of(kept), len(kept))
    store.append_result("t2", 1, 0, [kept])
    store.release_task("t2", ALICE, [], digest_of(kept))
    clock.now += 1
    assert store.collect_garbage(never_live) == (0, 0)


def test_a_result_committed_while_its_task_is_released_is_not_kept(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    late = b"committed between the release's read and its function"
    store.begin_result("t1", 1, digest_of(late), len(late))
    db = store.index.db
    real_zrange = db.zrange
    reads: list[str] = []

    def read_then_commit(name: str, *args: object, **kwargs: object) -> object:
        found = real_zrange(name, *args, **kwargs)  # type: ignore[arg-type]
        reads.append(name)
        if len(reads) == 1:
            assert with_limits(store).append_result("t1", 1, 0, [late]).complete
        return found

    monkeypatch.setattr(db, "zrange", read_then_commit)
    store.release_task("t1", ALICE, [])
    monkeypatch.undo()
    assert reads == [keys.HOLDINGS.format(account="result:t1")] * 2  # read again
    assert store.collect_garbage(never_live) == (1, len(late))
