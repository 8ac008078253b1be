"""The blob store's index in Redis: what each call of blobs/blobs.lua needs (its keys built
here from blobs/constants.py), and the plain reads. No file is touched here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis

from hivemind_cluster.blobs import constants as keys
from hivemind_cluster.core import errors, redisdb

LIBRARY = redisdb.Library(
    "hivemind_cluster.blobs",
    "blobs.lua",
    {"NOT_HELD": (errors.NotFound, "input {detail} is not on the hub: upload it first")},
)
_SCAN_BATCH = 200
_RELEASE_TRIES = 5  # a release retries when a result was committed as it read the results


@dataclass(frozen=True)
class UploadRecord:
    """An upload as Redis keeps it (its bytes so far are the partial file's)."""

    upload_id: str
    account: str  # who will hold the blob: an account, or RESULT_HOLDER of the task
    kind: str  # INPUT | RESULT
    size: int  # announced
    digest: str  # announced ("" a browser's, until done); the blob's once done
    task: str = ""  # a result's
    attempt: str = ""  # a result's ("" for an input)
    done: bool = False  # committed: the blob is stored

    @classmethod
    def of(cls, upload_id: str, fields: dict[str, str]) -> UploadRecord:
        return cls(
            upload_id,
            fields["account"],
            fields["kind"],
            int(fields["size"]),
            fields["digest"],
            fields.get("task", ""),
            fields.get("attempt", ""),
            fields.get("done") == "1",
        )

    @property
    def resume_field(self) -> str:
        """Where an input announced with its digest is found again (``begin`` resumes it)."""
        return resume_field(self.digest, self.size) if self.kind == keys.INPUT else ""


def resume_field(digest: str, size: int) -> str:
    return f"{digest} {size}" if digest else ""


@dataclass(frozen=True)
class Pin:
    """A task's pin on a blob: when it was made, for whom (the task's owner)."""

    time: float
    account: str

    @classmethod
    def parse(cls, value: str) -> Pin:
        time, _, account = value.partition(" ")
        return cls(float(time), account)


@dataclass(frozen=True)
class BlobUse:
    """Who holds and pins one blob, as the garbage collector saw it."""

    digest: str
    holders: dict[str, float]  # account -> expiry
    pins: dict[str, Pin]  # task id -> its pin


class BlobIndex:
    """The Redis side of the store; every method is one round trip or one atomic function."""

    def __init__(self, db: redis.Redis) -> None:
        self.db = db
        redisdb.reload_libraries(db, (LIBRARY,))

    def _call(self, function: str, names: list[str], args: list[Any]) -> Any:
        return LIBRARY.call(self.db, function, names, args)

    # Uploads
    def begin(
        self,
        account: str,
        digest: str,
        size: int,
        now: float,
        expiry: float,
        quota: int,
        max_open: int,
        max_blobs: int,
        new_id: str,
    ) -> tuple[str, str]:
        """("held" | "size" | "resume" | "quota" | "too_many" | "too_many_blobs" | "new",
        id or number)."""
        reply = self._call(
            "hm_blob_begin",
            [
                keys.BLOBS,
                keys.HOLDINGS.format(account=account),
                keys.HOLDERS.format(digest=digest),
                keys.ACCOUNT_UPLOADS.format(account=account),
                keys.ACCOUNT_RESUME.format(account=account),
                keys.UPLOAD.format(id=new_id),
                keys.UPLOADS,
                keys.ACCOUNT_PINS.format(account=account),
            ],
            [
                account,
                digest,
                size,
                now,
                expiry,
                quota,
                max_open,
                new_id,
                resume_field(digest, size),
                max_blobs,
            ],
        )
        return str(reply[0]), str(reply[1]) if len(reply) > 1 else ""

    def begin_result(
        self, task: str, attempt: int, digest: str, size: int, now: float, new_id: str
    ) -> tuple[str, str]:
        """("done" | "committed" | "open" | "new", upload id or the committed digest)."""
        reply = self._call(
            "hm_blob_begin_result",
            [
                keys.BLOBS,
                keys.TASK_RESULTS.format(task=task),
                keys.UPLOAD.format(id=new_id),
                keys.UPLOADS,
            ],
            [task, attempt, digest, size, now, new_id, result_holder(task)],
        )
        return str(reply[0]), str(reply[1]) if len(reply) > 1 else ""

    def record(self, upload_id: str) -> UploadRecord | None:
        fields = cast(dict[str, str], self.db.hgetall(keys.UPLOAD.format(id=upload_id)))
        return UploadRecord.of(upload_id, fields) if "account" in fields else None

    def touch(self, upload_id: str, now: float) -> None:
        self.db.zadd(keys.UPLOADS, {upload_id: now}, xx=True)

    def commit(
        self, record: UploadRecord, digest: str, now: float, expiry: float, keep_seconds: int
    ) -> None:
        """The blob is in data/: record it, its holding (and a result's attempt), and close
        the upload, atomically."""
        self._call(
            "hm_blob_commit",
            [
                keys.BLOBS,
                keys.UPLOAD.format(id=record.upload_id),
                keys.UPLOADS,
                keys.ACCOUNT_UPLOADS.format(account=record.account),
                keys.ACCOUNT_RESUME.format(account=record.account),
                keys.HOLDINGS.format(account=record.account),
                keys.HOLDERS.format(digest=digest),
                keys.TASK_RESULTS.format(task=record.task),
            ],
            [
                record.upload_id,
                digest,
                record.size,
                expiry,
                record.account,
                record.resume_field,
                record.attempt,
                max(1, keep_seconds),
                now,
            ],
        )

    def drop(self, record: UploadRecord, touched_before: float | None = None) -> bool:
        """Forget the upload (only if untouched since ``touched_before``, when given)."""
        dropped = self._call(
            "hm_blob_drop_upload",
            [
                keys.UPLOAD.format(id=record.upload_id),
                keys.UPLOADS,
                keys.ACCOUNT_UPLOADS.format(account=record.account),
                keys.ACCOUNT_RESUME.format(account=record.account),
                keys.TASK_RESULTS.format(task=record.task),
            ],
            [
                record.upload_id,
                record.resume_field,
                record.attempt,
                "" if touched_before is None else touched_before,
            ],
        )
        return bool(dropped)

    def uploads_untouched_since(self, cutoff: float) -> list[str]:
        return cast(list[str], self.db.zrange(keys.UPLOADS, "-inf", cutoff, byscore=True))

    # Blobs and holdings
    def usage(self, account: str, now: float) -> int:
        return int(
            self._call(
                "hm_blob_usage",
                [
                    keys.BLOBS,
                    keys.HOLDINGS.format(account=account),
                    keys.ACCOUNT_PINS.format(account=account),
                    keys.ACCOUNT_UPLOADS.format(account=account),
                ],
                [now],
            )
        )

    def size(self, digest: str) -> int | None:
        size = self.db.hget(keys.BLOBS, digest)
        return None if size is None else int(cast(str, size))

    def holding_expiry(self, account: str, digest: str) -> float | None:
        expiry = self.db.zscore(keys.HOLDINGS.format(account=account), digest)
        return None if expiry is None else float(expiry)

    def result_digest(self, task: str, attempt: int) -> str:
        digest = self.db.hget(keys.TASK_RESULTS.format(task=task), str(attempt))
        return "" if digest is None else cast(str, digest)

    def result_upload(self, task: str, attempt: int) -> str:
        upload_id = self.db.hget(keys.TASK_RESULTS.format(task=task), f"upload:{attempt}")
        return "" if upload_id is None else cast(str, upload_id)

    # Tasks
    def pin(
        self, task: str, account: str, digests: list[str], now: float, expiry: float
    ) -> list[int]:
        names = [
            keys.BLOBS,
            keys.HOLDINGS.format(account=account),
            keys.ACCOUNT_PINS.format(account=account),
        ]
        for digest in digests:
            names += [keys.HOLDERS.format(digest=digest), keys.PINS.format(digest=digest)]
        sizes = self._call("hm_blob_pin", names, [account, task, now, expiry, *digests])
        return [int(size) for size in sizes]

    def release(
        self,
        task: str,
        account: str,
        digests: list[str],
        result_digest: str,
        now: float,
        input_expiry: float,
        result_expiry: float,
    ) -> None:
        holder = result_holder(task)
        names = [
            keys.HOLDINGS.format(account=account),
            keys.HOLDINGS.format(account=holder),
            keys.TASK_RESULTS.format(task=task),
            keys.ACCOUNT_PINS.format(account=account),
        ]
        for digest in digests:
            names += [keys.HOLDERS.format(digest=digest), keys.PINS.format(digest=digest)]
        ttl = max(1, int(result_expiry - now))
        args = [account, task, input_expiry, holder, result_digest, result_expiry, now, ttl]
        for _ in range(_RELEASE_TRIES):  # the function checks the results read here
            results = cast(list[str], self.db.zrange(keys.HOLDINGS.format(account=holder), 0, -1))
            held = [keys.HOLDERS.format(digest=digest) for digest in results]
            released = self._call(
                "hm_blob_release", names + held, [*args, len(digests), *digests, *results]
            )
            if released:
                return
        raise errors.Conflict(f"task {task}: results kept changing as it was released")

    # Garbage
    def blob_digests(self) -> Iterator[list[str]]:
        """Every blob's digest, in batches (HSCAN: blobs added meanwhile may be missed)."""
        batch: list[str] = []
        for digest, _ in self.db.hscan_iter(keys.BLOBS, count=_SCAN_BATCH):
            batch.append(cast(str, digest))
            if len(batch) >= _SCAN_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def uses(self, digests: list[str]) -> list[BlobUse]:
        pipe = self.db.pipeline(transaction=False)
        for digest in digests:
            pipe.zrange(keys.HOLDERS.format(digest=digest), 0, -1, withscores=True)
            pipe.hgetall(keys.PINS.format(digest=digest))
        replies = pipe.execute()
        return [
            BlobUse(
                digest,
                {str(a): float(s) for a, s in holders},
                {task: Pin.parse(pin) for task, pin in pins.items()},
            )
            for digest, holders, pins in zip(digests, replies[::2], replies[1::2], strict=True)
        ]

    def forget(
        self, use: BlobUse, now: float, stale_tasks: list[str], expired_holders: list[str]
    ) -> int | None:
        """Drop stale pins (of ``use.pins``) and expired holdings; the size of the blob when
        nothing holds or pins it any more (it is forgotten: delete its file), else None."""
        digest = use.digest
        names = [keys.BLOBS, keys.HOLDERS.format(digest=digest), keys.PINS.format(digest=digest)]
        names += [keys.ACCOUNT_PINS.format(account=use.pins[task].account) for task in stale_tasks]
        names += [keys.HOLDINGS.format(account=account) for account in expired_holders]
        args = [digest, now, len(stale_tasks), *stale_tasks, *expired_holders]
        size = int(self._call("hm_blob_forget", names, args))
        return None if size < 0 else size


def result_holder(task: str) -> str:
    return keys.RESULT_HOLDER.format(task=task)
