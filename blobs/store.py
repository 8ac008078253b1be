"""The hub's blob store: uploads by accounts and results from workers, written in chunks and
resumable by offset, verified by SHA-256, stored once per content, kept while an account
holds them or a live task pins them (blobs/constants.py says what those are).

Synchronous and thread-safe; the web and the pool each make their own ``BlobStore`` on the
same directory and Redis (the pool calls it on threads of its own, ``in_store_thread`` in
pool/taskdata.py). The files are blobs/files.py's, the Redis index blobs/index.py's,
garbage blobs/garbage.py's, refusals blobs/refusals.py's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import redis

from hivemind_cluster.blobs import garbage
from hivemind_cluster.blobs.constants import INPUT, RESULT
from hivemind_cluster.blobs.files import UPLOAD_ID, BlobFiles, write_chunks
from hivemind_cluster.blobs.index import BlobIndex, UploadRecord, result_holder
from hivemind_cluster.blobs.refusals import check_size, no_room, refuse_begin
from hivemind_cluster.blobs.states import BlobLimits, UploadState
from hivemind_cluster.blobs.uploads import Hashers, UploadLocks
from hivemind_cluster.core.errors import Conflict, InvalidInput, NotFound, TooLarge
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.blobs import CHUNK_BYTES, Hasher, check_digest, hash_file

__all__ = ["BlobLimits", "BlobStore", "UploadState"]

LOCK_WAIT_SECONDS = 10.0  # an append waits this long for another one to the same upload
MAX_OPEN_UPLOADS = 64  # unfinished uploads per account
MAX_ACCOUNT_BLOBS = 100_000  # blobs an account holds or pins (its usage walks them all)


class BlobStore:
    """One per process (it loads the index's functions into Redis when made)."""

    def __init__(
        self,
        root: Path,
        db: redis.Redis,
        limits: BlobLimits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.files = BlobFiles(root)
        self.index = BlobIndex(db)
        self.locks = UploadLocks(LOCK_WAIT_SECONDS)
        self.hashers = Hashers()

    @classmethod
    def for_hub(cls, settings: HubSettings, db: redis.Redis) -> BlobStore:
        return cls(settings.blob_path, db, BlobLimits.from_settings(settings))

    # Uploads by an account
    def begin_upload(self, account: str, size: int, digest: str = "") -> UploadState:
        """Already held by the account → complete, upload_id "" (its holding refreshed).
        Else the account's open upload of (digest, size) if any (resume: its offset), else a
        new one at 0 (a browser's, without a digest, is always new). TooLarge over
        max_input_bytes or the quota; InvalidInput for a bad digest. A blob another account
        holds still needs the bytes (proof of possession); once they match, the stored copy
        is shared."""
        check_size(size, self.limits.max_input_bytes, "an upload")
        if digest:
            check_digest(digest, "upload digest")
        for _ in range(2):  # twice: a resumable upload may turn out to have lost its file
            new_id, outcome, value = self._with_new_upload(
                lambda new_id: self._index_begin(account, digest, size, new_id)
            )
            if outcome == "new":
                if size == 0:
                    return self.append(account, new_id, 0, ())
                new = UploadRecord(new_id, account, INPUT, size, digest)
                return self._with_room(_open_state(new, 0), new)
            if outcome == "held":
                return UploadState.stored(digest, size)
            if outcome != "resume":
                refuse_begin(self.limits, outcome, int(value), size, digest, MAX_ACCOUNT_BLOBS)
            try:
                return self._with_room(self.upload_state(account, value))
            except NotFound:
                self._drop_if_lost(value)
        raise NotFound(f"upload of {digest} could not resume or start: begin it again")

    def _index_begin(self, account: str, digest: str, size: int, new_id: str) -> tuple[str, str]:
        now = self.clock()
        return self.index.begin(
            account,
            digest,
            size,
            now,
            now + self.limits.upload_retention_seconds,
            self.limits.quota_bytes,
            MAX_OPEN_UPLOADS,
            MAX_ACCOUNT_BLOBS,
            new_id,
        )

    def upload_state(self, account: str, upload_id: str) -> UploadState:
        """The upload's offset now (without waiting for an append under way, unless every
        byte is there: then it is committed first, see ``_state``)."""
        return self._state(self._record(upload_id, account, INPUT))

    def _state(self, record: UploadRecord) -> UploadState:
        """Where the upload is. One holding all its bytes yet not done (the hub stopped
        between the last write and the commit) is committed now: no client could go on
        with it, having nothing more to send."""
        if not record.done:
            try:
                held = self.files.upload_path(record.upload_id).stat().st_size
            except FileNotFoundError:  # committed meanwhile, or lost (append removes it)
                record = self.index.record(record.upload_id) or record
                if not record.done:
                    raise _gone(f"upload {record.upload_id}") from None
            else:
                if held < record.size:
                    return _open_state(record, held)
                return self._append(record, held, (), _what(record))
        return UploadState.stored(record.digest, record.size)

    def _with_room(self, state: UploadState, new: UploadRecord | None = None) -> UploadState:
        """``state``, when the disk has room for the bytes still to come and a margin;
        else Unavailable (and ``new``, the upload just begun, goes again)."""
        needed = state.size - state.offset
        free = 0 if state.complete else self.files.free_bytes()
        if not state.complete and free < needed + self.limits.disk_margin_bytes:
            if new is not None:
                self.remove_upload(new)
            raise no_room(free, needed, self.limits.disk_margin_bytes)
        return state

    def append(
        self, account: str, upload_id: str, offset: int, chunks: Iterable[bytes]
    ) -> UploadState:
        """Write ``chunks`` at ``offset``, which must be the held offset (else Conflict that
        says it). TooLarge the moment the bytes would pass the announced size, InvalidInput
        when the complete bytes are not the announced digest: either way the upload is
        removed and nothing stored. Complete and verified: committed, held by the account.
        Two appends to one upload never interleave: the second waits, then sees the offset
        the first left (or, after LOCK_WAIT_SECONDS, Conflict)."""
        record = self._record(upload_id, account, INPUT)
        return self._append(record, offset, chunks, _what(record))

    def cancel_upload(self, account: str, upload_id: str) -> None:
        """Give up the account's unfinished upload: its partial file goes and it no longer
        counts toward the quota (else it would until upload_retention_seconds untouched).
        NotFound for another account's, an unknown one and a completed one: its bytes are a
        holding now, which a submission may already name, so there is nothing to give up.
        Waits for an append under way (Conflict after LOCK_WAIT_SECONDS)."""
        if self._record(upload_id, account, INPUT).done:
            raise _gone(f"upload {upload_id}")
        with self.locks.hold(upload_id, self.files.upload_path(upload_id)):
            current = self.index.record(upload_id)  # as it is now that this holds the lock
            if current is None or current.done:
                raise _gone(f"upload {upload_id}")
            self.remove_upload(current)

    def holds(self, account: str, digest: str) -> bool:
        expiry = self.index.holding_expiry(account, check_digest(digest))
        return expiry is not None and expiry > self.clock() and self.index.size(digest) is not None

    def usage(self, account: str) -> tuple[int, int]:
        """(bytes held: live holdings and unfinished uploads at their announced size, quota)."""
        return self.index.usage(account, self.clock()), self.limits.quota_bytes

    def size(self, digest: str) -> int:
        size = self.index.size(check_digest(digest))
        if size is None:
            raise NotFound(f"{digest} is not on the hub")
        return size

    def path(self, digest: str) -> Path:
        """The complete blob's file (read-only); NotFound when the hub has no such blob."""
        self.size(digest)
        return self.known_path(digest)

    def known_path(self, digest: str) -> Path:
        """``path`` of a blob the caller has just found in the index (its size read, a pin
        or a result answered): the file, without asking the index again."""
        return self.files.blob_path(digest)

    def read(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """The blob from ``offset`` on, in CHUNK_BYTES pieces (the file is opened now: a
        blob removed later still reads to its end)."""
        size = self.size(digest)
        if not 0 <= offset <= size:
            raise InvalidInput(f"offset {offset} is outside {digest} ({size} bytes)")
        try:
            source = open(self.files.blob_path(digest), "rb")  # noqa: SIM115 (the reader's)
        except FileNotFoundError:
            raise NotFound(f"{digest} is not on the hub") from None
        source.seek(offset)
        return _pieces(source)

    # Tasks
    def pin_inputs(self, task_id: str, account: str, digests: list[str]) -> dict[str, int]:
        """Atomically: every digest held by ``account`` (else NotFound "input sha256:… is
        not on the hub: upload it first"), then all pinned for the task; their sizes."""
        unique = list(dict.fromkeys(check_digest(d, "input digest") for d in digests))
        if not unique:
            return {}
        now = self.clock()
        expiry = now + self.limits.upload_retention_seconds
        sizes = self.index.pin(task_id, account, unique, now, expiry)
        return dict(zip(unique, sizes, strict=True))

    def release_task(
        self, task_id: str, account: str, digests: list[str], result_digest: str = ""
    ) -> None:
        """The task ended: its pins go (the owner keeps what it pinned for
        upload_retention_seconds from now), its result is kept result_retention_seconds
        (results of its other attempts expire now)."""
        unique = list(dict.fromkeys(check_digest(d, "input digest") for d in digests))
        if result_digest:
            check_digest(result_digest, "result digest")
        now = self.clock()
        self.index.release(
            task_id,
            account,
            unique,
            result_digest,
            now,
            now + self.limits.upload_retention_seconds,
            now + self.limits.result_retention_seconds,
        )

    # Results from workers (the pool checked the attempt is the caller's current one)
    def begin_result(self, task_id: str, attempt: int, digest: str, size: int) -> UploadState:
        """The attempt's result upload: complete when already committed, the open one for
        the same digest and size (its offset), else a new one (replacing an unfinished one
        of the attempt). One result per attempt: once one is committed, another is a
        Conflict (each would be kept for the result retention). TooLarge over
        max_result_bytes; Unavailable when the hub's disk has no room for it."""
        check_digest(digest, "result digest")
        check_size(size, self.limits.max_result_bytes, "a result")
        for _ in range(3):  # an open upload of another digest is removed, then again
            new_id, outcome, upload_id = self._with_new_upload(
                lambda new_id: self.index.begin_result(
                    task_id, attempt, digest, size, self.clock(), new_id
                )
            )
            if outcome == "done":
                return UploadState.stored(digest, size)
            if outcome == "committed":
                raise Conflict(
                    f"task {task_id} attempt {attempt} wrote its result already ({upload_id}): "
                    "an attempt writes one result"
                )
            if outcome == "new":
                if size == 0:
                    return self.append_result(task_id, attempt, 0, ())
                holder = result_holder(task_id)
                new = UploadRecord(new_id, holder, RESULT, size, digest, task_id, str(attempt))
                return self._with_room(_open_state(new, 0), new)
            state = self._resume_result(task_id, attempt, upload_id, digest, size)
            if state is not None:
                return self._with_room(state)
        raise Conflict(f"result of task {task_id} attempt {attempt} is busy: try again")

    def _resume_result(
        self, task_id: str, attempt: int, upload_id: str, digest: str, size: int
    ) -> UploadState | None:
        """The open upload's state when it is of ``digest`` and ``size``; else it is
        removed (None: begin anew)."""
        found = self.index.record(upload_id)
        if found is not None and (found.digest, found.size) == (digest, size):
            self.index.touch(upload_id, self.clock())
            with contextlib.suppress(NotFound):
                return self._state(found)
        record = found or UploadRecord(
            upload_id, result_holder(task_id), RESULT, size, "", task_id, str(attempt)
        )
        with self.locks.hold(upload_id, self.files.upload_path(upload_id)):
            self.remove_upload(record)
        return None

    def append_result(
        self, task_id: str, attempt: int, offset: int, chunks: Iterable[bytes]
    ) -> UploadState:
        """As ``append``, to the attempt's result upload (begin_result first); the
        committed blob is held as the task's result."""
        upload_id = self.index.result_upload(task_id, attempt)
        if not upload_id:
            digest = self.index.result_digest(task_id, attempt)
            size = self.index.size(digest) if digest else None
            if size is not None:
                return UploadState.stored(digest, size)
            raise NotFound(
                f"task {task_id} attempt {attempt} has no result upload: ask for its offset"
            )
        record = self._record(upload_id, result_holder(task_id), RESULT)
        return self._append(record, offset, chunks, _what(record))

    def result_ready(self, task_id: str, attempt: int, digest: str, size: int) -> bool:
        """The attempt's result is committed with this digest and size."""
        return self.index.result_digest(task_id, attempt) == digest and (
            self.index.size(digest) == size
        )

    # Garbage
    def collect_garbage(self, task_is_live: Callable[[list[str]], list[bool]]) -> tuple[int, int]:
        """Remove blobs no account holds any more (retention over) and no live task pins
        (``task_is_live`` answers for pinned task ids: a pin of an ended task is stale),
        files in data/ the index does not know, and uploads untouched for
        upload_retention_seconds. (blobs removed, bytes freed: theirs and the uploads').
        Safe against a concurrent commit of the same digest (flock on the store)."""
        return garbage.collect(self, task_is_live)

    def remove_upload(self, record: UploadRecord, touched_before: float | None = None) -> int:
        """Forget the upload and delete its partial file (call holding its lock); the
        bytes freed, or -1 when it was touched since ``touched_before``."""
        if not self.index.drop(record, touched_before):
            return -1
        self.hashers.forget(record.upload_id)
        return self.files.remove_upload(record.upload_id)

    # The write path
    def _append(
        self, record: UploadRecord, offset: int, chunks: Iterable[bytes], what: str
    ) -> UploadState:
        if record.done:
            return UploadState.stored(record.digest, record.size)
        upload_id = record.upload_id
        with self.locks.hold(upload_id, self.files.upload_path(upload_id)) as fd:
            current = self.index.record(upload_id)  # as it is now that this holds the lock
            if current is None:
                raise _gone(what)
            if current.done:
                return UploadState.stored(current.digest, current.size)
            if fd is None:
                return self._lost(current)
            held = os.fstat(fd).st_size
            if offset != held:
                raise Conflict(
                    f"{what} is at offset {held} ({format_bytes(held)} held), not {offset}: "
                    f"resume from {held}"
                )
            self.index.touch(upload_id, self.clock())
            hasher = self.hashers.take(upload_id, held) or self._rehash(upload_id, held)
            try:
                write_chunks(fd, hasher, current.size, chunks, what)
            except TooLarge:
                self.remove_upload(current)
                raise
            except BaseException:
                self.hashers.keep(upload_id, hasher)  # the file was cut back to its bytes
                raise
            self.index.touch(upload_id, self.clock())
            if hasher.size < current.size:
                self.hashers.keep(upload_id, hasher)
                return _open_state(current, hasher.size)
            return self._commit(current, fd, hasher, what)

    def _commit(self, record: UploadRecord, fd: int, hasher: Hasher, what: str) -> UploadState:
        digest = hasher.digest
        if record.digest and digest != record.digest:
            self.remove_upload(record)
            raise InvalidInput(
                f"{what}: the bytes are {digest}, not the announced {record.digest}; "
                "nothing was stored"
            )
        retention = (
            self.limits.result_retention_seconds
            if record.kind == RESULT
            else self.limits.upload_retention_seconds
        )
        self.files.seal(fd)
        with self.files.store_lock():
            self.files.place(self.files.upload_path(record.upload_id), digest)
            now = self.clock()
            keep = self.limits.upload_retention_seconds
            self.index.commit(record, digest, now, now + retention, keep)
        self.hashers.forget(record.upload_id)
        return UploadState.stored(digest, record.size)

    def _rehash(self, upload_id: str, held: int) -> Hasher:
        """The hash of the partial file's bytes (this process has not seen them)."""
        return hash_file(self.files.upload_path(upload_id), limit=held)

    def _drop_if_lost(self, upload_id: str) -> None:
        """Forget an open upload whose partial file is gone (it cannot go on)."""
        with self.locks.hold(upload_id, self.files.upload_path(upload_id)) as fd:
            record = self.index.record(upload_id)
            if fd is None and record is not None and not record.done:
                self.remove_upload(record)

    def _lost(self, record: UploadRecord) -> UploadState:
        self.remove_upload(record)
        raise NotFound(f"upload {record.upload_id} lost its bytes on the hub: begin it again")

    def _record(self, upload_id: str, account: str, kind: str) -> UploadRecord:
        """The account's upload of that kind; NotFound for any other (no hint that it
        exists)."""
        record = self.index.record(upload_id) if UPLOAD_ID.match(upload_id) else None
        if record is None or record.account != account or record.kind != kind:
            raise _gone(f"upload {upload_id[:40]}")
        return record

    def _with_new_upload(self, begin: Callable[[str], tuple[str, str]]) -> tuple[str, str, str]:
        """(new id, outcome, value) of ``begin(new id)`` called with the partial file of
        the new id already there (an upload's record never lacks its file); the file goes
        again unless the outcome is "new"."""
        new_id = secrets.token_hex(16)
        self.files.create_upload(new_id)
        outcome = ""
        try:
            outcome, value = begin(new_id)
        finally:
            if outcome != "new":
                self.files.remove_upload(new_id)
        return new_id, outcome, value


def _gone(what: str) -> NotFound:
    return NotFound(f"{what} is not on the hub (finished or expired)")


def _what(record: UploadRecord) -> str:
    """The upload as errors name it."""
    if record.kind == RESULT:
        return f"result of task {record.task}"
    return f"upload {record.upload_id}"


def _open_state(record: UploadRecord, held: int) -> UploadState:
    return UploadState(record.upload_id, held, record.size, record.digest, False)


def _pieces(source: BinaryIO) -> Iterator[bytes]:
    with source:
        while chunk := source.read(CHUNK_BYTES):
            yield chunk
