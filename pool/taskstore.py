"""Tasks in Redis: every state change is one call of a Lua function (pool/redis_functions.lua).

A task's data is in the hub's blob store (blobs/), by digest: the task records its bundle
and inputs (``TaskSpec.bundle``, ``inputs``) and its result's digest (``output``), which
the pool checked was written for the attempt before it records it (``Pool._result``).
Its usage over its run (``record_usage``, ``usage_samples``) is kept by pool/taskusage.py.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from hivemind_cluster.core import errors
from hivemind_cluster.model.spec import TaskSpec
from hivemind_cluster.model.states import FINAL_STATES, TaskState
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool import metrics
from hivemind_cluster.pool.records import TaskRecord, spec_fields
from hivemind_cluster.pool.store import TASKS
from hivemind_cluster.pool.taskusage import TaskUsageStore
from hivemind_cluster.protos import pool_pb2 as pb

log = logging.getLogger("hivemind.pool")


_TASK_ID = re.compile(r"^t[0-9a-f]{12}$")


def new_task_id() -> str:
    return "t" + secrets.token_hex(6)


def check_task_id(task_id: str) -> str:
    if not _TASK_ID.match(task_id):
        raise errors.InvalidInput(f"{task_id[:40]!r} is not a task id")
    return task_id


def _bounded_figure(value: float) -> float:
    """A usage figure reported by a worker: finite, not negative, at most a year."""
    return round(min(max(value, 0.0), 366 * 86400.0), 6) if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class LogRecord:
    entry_id: str
    stream: str
    data: bytes
    attempt: int
    time: float


class TaskStore:
    def __init__(self, db: Any, log_cap_bytes: int) -> None:
        # A redis.asyncio client with decode_responses=True (Any: its replies are untyped).
        self.db = db
        self.log_cap_bytes = log_cap_bytes
        # Attempts whose refused output was logged already (bounded).
        self._refused_logs: collections.deque[tuple[str, int]] = collections.deque(maxlen=1000)
        self.usage = TaskUsageStore(db)

    async def _call(self, function: str, key_list: list[str], args: list[Any]) -> Any:
        return await TASKS.acall(self.db, function, key_list, args)

    @staticmethod
    def _task_keys(task_id: str) -> tuple[str, str, str, str]:
        return (
            keys.TASK.format(id=task_id),
            keys.QUEUE,
            keys.TASK_ATTEMPTS.format(id=task_id),
            keys.TASK_LOGS.format(id=task_id),
        )

    # ---- submission and queries ----------------------------------------------------------

    async def submit(
        self,
        spec: TaskSpec,
        idempotency_key: str = "",
        task_id: str = "",
        price_cap: int = 0,
    ) -> TaskRecord:
        """Store and queue a task; with a known idempotency key, the earlier task instead."""
        task_id = task_id or new_task_id()
        fields = {
            **spec_fields(spec),
            "submitted_at": repr(time.time()),
            "price_cap": str(price_cap),
        }
        key_list = [keys.TASK.format(id=task_id), keys.QUEUE, keys.TASKS, keys.TASK_SEQ]
        if idempotency_key:
            key_list.append(keys.IDEMPOTENCY.format(owner=spec.owner, key=idempotency_key))
        flat = [item for pair in fields.items() for item in pair]
        stored_id, created = await self._call(
            "hm_task_submit", key_list, [task_id, spec.priority, time.time(), *flat]
        )
        metrics.state_changed(TaskState.QUEUED, int(bool(created)))
        return await self.get(stored_id)

    async def get(self, task_id: str) -> TaskRecord:
        raw = await self.db.hgetall(keys.TASK.format(id=task_id))
        if not raw:
            raise errors.NotFound(f"no task {task_id!r}")
        return TaskRecord.from_hash(raw)

    async def get_with_attempts(self, task_id: str) -> tuple[TaskRecord, list[dict[str, Any]]]:
        """A task and its finished attempts, in one round trip."""
        pipe = self.db.pipeline(transaction=False)
        pipe.hgetall(keys.TASK.format(id=task_id))
        pipe.lrange(keys.TASK_ATTEMPTS.format(id=task_id), 0, -1)
        raw, attempts = await pipe.execute()
        if not raw:
            raise errors.NotFound(f"no task {task_id!r}")
        return TaskRecord.from_hash(raw), [json.loads(item) for item in attempts]

    async def attempts(self, task_id: str) -> list[dict[str, Any]]:
        (found,) = await self.attempts_of([task_id])
        return found

    async def attempts_of(self, task_ids: list[str]) -> list[list[dict[str, Any]]]:
        """The finished attempts of each task, in one round trip."""
        pipe = self.db.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.lrange(keys.TASK_ATTEMPTS.format(id=task_id), 0, -1)
        return [[json.loads(item) for item in raw] for raw in await pipe.execute()]

    async def list_tasks(
        self, statuses: set[str] | None = None, owner: str = "", limit: int = 100
    ) -> list[TaskRecord]:
        """Newest first, filtered; looks at no more than the 50 * limit most recent tasks."""
        found: list[TaskRecord] = []
        ids = await self.db.zrevrange(keys.TASKS, 0, limit * 50 - 1)
        for start in range(0, len(ids), 500):
            pipe = self.db.pipeline(transaction=False)
            for task_id in ids[start : start + 500]:
                pipe.hgetall(keys.TASK.format(id=task_id))
            for raw in await pipe.execute():
                if not raw:
                    continue
                record = TaskRecord.from_hash(raw)
                if (statuses and record.status not in statuses) or (
                    owner and record.owner != owner
                ):
                    continue
                found.append(record)
                if len(found) >= limit:
                    return found
        return found

    async def by_ids(self, task_ids: list[str]) -> list[TaskRecord]:
        pipe = self.db.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(keys.TASK.format(id=task_id))
        return [TaskRecord.from_hash(raw) for raw in await pipe.execute() if raw]

    async def queued(self) -> list[TaskRecord]:
        return await self.by_ids(await self.db.zrange(keys.QUEUE, 0, -1))

    async def on_node(self, node_id: str) -> list[TaskRecord]:
        ids = await self.db.smembers(keys.NODE_TASKS.format(id=node_id))
        return await self.by_ids(sorted(ids))

    # ---- transitions ---------------------------------------------------------------------

    async def assign_many(self, placements: list[tuple[str, int, str]]) -> list[bool]:
        """Record (task, attempt, node) assignments in one round trip; False: task moved on."""
        pipe = self.db.pipeline(transaction=False)
        now = time.time()
        for task_id, attempt, node_id in placements:
            task, queue, _attempts, logs = self._task_keys(task_id)
            node_tasks = keys.NODE_TASKS.format(id=node_id)
            pipe.fcall(
                "hm_task_assign", 4, task, queue, node_tasks, logs, task_id, attempt, node_id, now
            )
        results = await pipe.execute(raise_on_error=False)
        recorded = [not isinstance(result, Exception) for result in results]
        metrics.state_changed(TaskState.ASSIGNED, sum(recorded))
        return recorded

    async def start(self, task_id: str, attempt: int, node_id: str) -> None:
        await self._call(
            "hm_task_start",
            [keys.TASK.format(id=task_id)],
            [task_id, attempt, node_id, time.time()],
        )
        metrics.state_changed(TaskState.RUNNING)

    async def log(
        self,
        task_id: str,
        attempt: int,
        node_id: str,
        stream: str,
        data: bytes,
        offset: int | None = None,
    ) -> bool:
        """Store a chunk of an attempt's output; False when it is dropped (over the cap) or
        was stored already (``offset``: where it starts in the attempt's output, so that a
        chunk sent again is stored once). A superseded attempt's chunk raises
        ``StaleAttempt``, and the pool's log says so once per attempt."""
        task, _queue, _attempts, logs = self._task_keys(task_id)
        where = "" if offset is None else offset
        arguments = [task_id, attempt, node_id, stream, data, self.log_cap_bytes, time.time()]
        try:
            stored = await self._call("hm_task_log", [task, logs], [*arguments, where])
        except errors.StaleAttempt as refused:
            self._say_refused(task_id, attempt, node_id, refused.message)
            raise
        return bool(stored == 1)

    def _say_refused(self, task_id: str, attempt: int, node_id: str, reason: str) -> None:
        """Log a refused chunk once per attempt: a superseded agent may still send many."""
        if (task_id, attempt) in self._refused_logs:
            return
        self._refused_logs.append((task_id, attempt))
        log.warning(
            "task %s attempt %d: output from %s refused: %s", task_id, attempt, node_id, reason
        )

    async def finish(self, node_id: str, result: pb.TaskResult) -> str:
        """Record an attempt's result (fenced); returns the task's new status. Its result zip
        (``output_digest``) was checked by the caller: written for this attempt, and sound."""
        check_task_id(result.task_id)
        task, queue, attempts, logs = self._task_keys(result.task_id)
        usage = {
            "cpu_seconds": _bounded_figure(result.usage.cpu_seconds),
            "peak_memory_bytes": max(0, min(result.usage.peak_memory_bytes, 1 << 50)),
            "wall_seconds": _bounded_figure(result.usage.wall_seconds),
            "gpu_seconds": _bounded_figure(result.usage.gpu_seconds),
        }
        exit_code = str(result.exit_code) if result.exit_code >= 0 else ""
        status: str = await self._call(
            "hm_task_finish",
            [task, queue, keys.NODE_TASKS.format(id=node_id), attempts, logs],
            [
                result.task_id,
                result.attempt,
                node_id,
                time.time(),
                result.status,
                exit_code,
                result.error[:1000],
                json.dumps(usage),
                result.output_digest,
                result.output_size if result.output_digest else 0,
                result.image_digest,
                result.log_bytes if result.HasField("log_bytes") else "",
            ],
        )
        metrics.state_changed(status)
        return status

    async def ended_by(
        self, node_id: str, attempts: list[tuple[str, int]]
    ) -> list[tuple[str, int]]:
        """Those of the (task, attempt)s that ended their task on this node, in one round
        trip: a repeated result of theirs would be refused, yet the pool has it."""
        pipe = self.db.pipeline(transaction=False)
        for task_id, _attempt in attempts:
            pipe.hmget(keys.TASK.format(id=task_id), ["status", "attempt", "node_id"])
        return [
            (task_id, attempt)
            for (task_id, attempt), (status, current, node) in zip(
                attempts, await pipe.execute(), strict=True
            )
            if status in FINAL_STATES and current == str(attempt) and node == node_id
        ]

    async def unsettled(self) -> list[str]:
        """Ended tasks whose escrow has not been settled yet (after a crash, say)."""
        return await self.ended_without(("settled",))

    async def ended_without(self, flags: tuple[str, ...]) -> list[str]:
        """Ended tasks not marked with every one of ``flags`` ("settled": its escrow paid
        out; "released": its data let go in the blob store), after a crash, say."""
        ids = await self.db.zrange(keys.TASKS, 0, -1)
        pipe = self.db.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(keys.TASK.format(id=task_id), ["status", *flags])
        return [
            task_id
            for task_id, (status, *marks) in zip(ids, await pipe.execute(), strict=True)
            if status in FINAL_STATES and any(mark != "1" for mark in marks)
        ]

    async def mark_released(self, task_id: str) -> None:
        """The ended task's data was let go in the blob store (``ended_without``)."""
        await self._call("hm_task_released", [keys.TASK.format(id=task_id)], [task_id])

    async def requeue(self, task_id: str, attempt: int, node_id: str, reason: str) -> str:
        task, queue, attempts, logs = self._task_keys(task_id)
        status: str = await self._call(
            "hm_task_requeue",
            [task, queue, keys.NODE_TASKS.format(id=node_id), attempts, logs],
            [task_id, attempt, node_id, time.time(), reason],
        )
        metrics.state_changed(status)
        return status

    async def cancel(self, task_id: str) -> tuple[str, str, int]:
        """``("cancelled"|"cancelling", node_id, attempt)``."""
        task, queue, _attempts, logs = self._task_keys(task_id)
        state, node_id, attempt = await self._call(
            "hm_task_cancel", [task, queue, logs], [task_id, time.time()]
        )
        metrics.state_changed(TaskState.CANCELLED, int(state == TaskState.CANCELLED))
        return str(state), str(node_id), int(attempt)

    # ---- usage over the run --------------------------------------------------------------

    async def record_usage(self, node_id: str, usage: Iterable[pb.TaskUsage]) -> int:
        """Keep a heartbeat's usage samples (fenced; best effort: never raises for them).
        Returns how many were kept."""
        entries = list(usage)
        checked = [entry for entry in entries if _TASK_ID.match(entry.task_id)]
        if len(checked) < len(entries):
            log.warning("usage samples from %s dropped: not a task id", node_id)
        return await self.usage.record(node_id, checked) if checked else 0

    async def usage_samples(self, task_id: str) -> list[pb.UsageSample]:
        """The task's CPU and memory over its latest attempt that sent any, in time order."""
        return await self.usage.samples(check_task_id(task_id))

    # ---- logs ----------------------------------------------------------------------------

    async def read_logs(
        self, raw_db: Any, task_id: str, after: str, block_ms: int | None, count: int = 1000
    ) -> list[LogRecord]:
        """Entries after ``after`` (``"0"``: from the start); waits up to block_ms for new ones."""
        stream = keys.TASK_LOGS.format(id=task_id)
        reply = await raw_db.xread({stream: after}, count=count, block=block_ms)
        records = []
        for _name, entries in reply or []:
            for entry_id, values in entries:
                records.append(
                    LogRecord(
                        entry_id.decode(),
                        values[b"stream"].decode(),
                        values[b"data"],
                        int(values[b"attempt"]),
                        float(values[b"time"]),
                    )
                )
        return records


def tasks_live(db: redis.Redis, task_ids: list[str]) -> list[bool]:
    """Which of the tasks have not ended, from a synchronous client (``decode_responses``):
    the blob store's garbage collection asks, in its thread, whether a task's pins still
    hold. A task that is not stored (its submission failed after pinning) is not live."""
    pipe = db.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hget(keys.TASK.format(id=task_id), "status")
    return [status is not None and status not in FINAL_STATES for status in pipe.execute()]
