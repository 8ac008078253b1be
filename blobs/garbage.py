"""Garbage of the blob store: blobs nothing holds or pins any more, files in data/ the index
does not know (a commit that stopped between placing the file and recording it), and
uploads nobody touched for ``upload_retention_seconds``.

A pin younger than PIN_GRACE_SECONDS always holds: the pool pins a submission's data
before it stores the task, so for a moment the pin's task does not exist yet.

Every removal of a blob happens with the store's flock held and only after Redis forgot it
atomically, so a commit of the same digest (which holds the flock too) either comes first
and keeps it, or comes after and places it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hivemind_cluster.blobs.index import BlobUse
from hivemind_cluster.core.errors import Conflict

if TYPE_CHECKING:
    from hivemind_cluster.blobs.store import BlobStore

TaskIsLive = Callable[[list[str]], list[bool]]
PIN_GRACE_SECONDS = 600  # far longer than a submission takes from its pins to its task


@dataclass
class Freed:
    blobs: int = 0
    bytes: int = 0

    def add(self, size: int, blob: bool = True) -> None:
        self.blobs += int(blob)
        self.bytes += size


def collect(store: BlobStore, task_is_live: TaskIsLive) -> tuple[int, int]:
    """(blobs removed, bytes freed: theirs and the stale uploads')."""
    freed = Freed()
    for batch in store.index.blob_digests():
        _collect_blobs(store, store.index.uses(batch), task_is_live, freed)
    _collect_unknown_files(store, freed)
    _collect_stale_uploads(store, freed)
    return freed.blobs, freed.bytes


def _collect_blobs(
    store: BlobStore, uses: list[BlobUse], task_is_live: TaskIsLive, freed: Freed
) -> None:
    now = store.clock()
    settled = now - PIN_GRACE_SECONDS
    unheld = {use.digest: use for use in uses if max(use.holders.values(), default=0) <= now}
    asked = {t for use in unheld.values() for t, pin in use.pins.items() if pin.time <= settled}
    pinned = sorted(asked)
    live = dict(zip(pinned, task_is_live(pinned), strict=True)) if pinned else {}
    for use in uses:
        expired = [account for account, expiry in use.holders.items() if expiry <= now]
        stale = [task for task in use.pins if not live.get(task, True)]
        if use.digest in unheld and len(stale) == len(use.pins):
            with store.files.store_lock():
                size = store.index.forget(use, now, stale, expired)
                if size is not None:
                    store.files.remove_blob(use.digest)
                    freed.add(size)
        elif expired or stale:  # tidy: the blob stays (held or pinned by a live task)
            store.index.forget(use, now, stale, expired)


def _collect_unknown_files(store: BlobStore, freed: Freed) -> None:
    for digest, path in store.files.blob_files():
        if store.index.size(digest) is not None:
            continue
        with store.files.store_lock():
            if store.index.size(digest) is None:  # not committed meanwhile
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                freed.add(size)


def _collect_stale_uploads(store: BlobStore, freed: Freed) -> None:
    cutoff = store.clock() - store.limits.upload_retention_seconds
    for upload_id in store.index.uploads_untouched_since(cutoff):
        record = store.index.record(upload_id)
        if record is None:
            continue
        try:
            with store.locks.hold(upload_id, store.files.upload_path(upload_id), wait=False):
                freed.add(max(0, store.remove_upload(record, touched_before=cutoff)), False)
        except Conflict:
            continue  # being written right now: not stale
    for upload_id, path in store.files.upload_files():
        record = store.index.record(upload_id)
        if (record is None or record.done) and _modified_before(path, cutoff):
            freed.add(store.files.remove_upload(upload_id), False)


def _modified_before(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:  # committed or removed meanwhile
        return False
