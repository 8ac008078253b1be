"""A task's CPU and memory over its run: the samples its worker sends in heartbeats, kept
in Redis for the task's view (its chart on the task page, ``hivemind status --json``).

Bounded per task: at most MAX_POINTS points; when full, each pair becomes its average and
later points average twice as many samples (pool/taskusage.lua), so a long run is kept
whole at a coarser resolution, in some 20 KB. Fenced like a log chunk: only the
task's current attempt on its node (or the attempt that ended it there, whose last samples
may follow its result) is kept; a new attempt's first sample starts the series again. A
sample no later than MIN_GAP_SECONDS after the last one kept is dropped, so the samples an
agent sends again after a reconnect are stored once, and an agent sending too many cannot
wear the run's history down to a few coarse points.

Samples are best effort: one that cannot be stored (bad figures, Redis not answering) is
dropped with a warning, never an error on the agent's stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import redis

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.protos import pool_pb2 as pb

log = logging.getLogger("hivemind.pool")

MAX_POINTS = 720  # an hour at the agent's 5 s, before the first halving
MIN_GAP_SECONDS = 1.0
# What one heartbeat may carry: more attempts or samples than this are ignored.
MAX_ATTEMPTS_PER_BEAT = 256
MAX_SAMPLES_PER_ATTEMPT = 64
MAX_CORES = 4096.0
MAX_MEMORY_BYTES = 1 << 50


def sample_figures(sample: pb.UsageSample) -> tuple[float, float, int]:
    """(time, cpu_cores, memory_bytes) of a sample; InvalidInput when they make no sense."""
    figures = (sample.time, sample.cpu_cores)
    if not all(math.isfinite(f) for f in figures) or sample.time <= 0:
        raise InvalidInput("a usage sample needs a finite time and CPU figure")
    if not 0 <= sample.cpu_cores <= MAX_CORES:
        raise InvalidInput(f"a usage sample's CPU must be 0-{MAX_CORES:g} cores")
    if not 0 <= sample.memory_bytes <= MAX_MEMORY_BYTES:
        raise InvalidInput("a usage sample's memory is out of range")
    return round(sample.time, 3), round(sample.cpu_cores, 4), sample.memory_bytes


def script_arguments(usage: pb.TaskUsage, node_id: str) -> list[Any]:
    """The Lua script's ARGV for one attempt's samples, in time order, bad ones left out."""
    arguments: list[Any] = [usage.attempt, node_id, MAX_POINTS, MIN_GAP_SECONDS]
    figures, refused = [], ""
    for sample in usage.samples[:MAX_SAMPLES_PER_ATTEMPT]:
        try:
            figures.append(sample_figures(sample))
        except InvalidInput as bad:
            refused = bad.message
    if refused:  # once per attempt and heartbeat
        log.warning("task %s: usage samples from %s dropped: %s", usage.task_id, node_id, refused)
    for figure in sorted(figures):
        arguments.extend(figure)
    return arguments


def parse_point(raw: str) -> pb.UsageSample:
    at, cores, memory = raw.split()
    return pb.UsageSample(time=float(at), cpu_cores=float(cores), memory_bytes=int(memory))


class TaskUsageStore:
    def __init__(self, db: Any) -> None:
        # A redis.asyncio client with decode_responses=True, the pool's libraries loaded
        # (pool/store.py: hm_task_usage is in taskusage.lua).
        self.db = db

    async def record(self, node_id: str, usage: Iterable[pb.TaskUsage]) -> int:
        """Keep the samples of a heartbeat (of attempts whose task ids were checked);
        returns how many were kept."""
        batch = []
        for entry in list(usage)[:MAX_ATTEMPTS_PER_BEAT]:
            arguments = script_arguments(entry, node_id)
            if len(arguments) > 4:
                batch.append((entry.task_id, arguments))
        if not batch:
            return 0
        pipe = self.db.pipeline(transaction=False)
        for task_id, arguments in batch:
            keys = usage_keys(task_id, with_task=True)
            pipe.fcall("hm_task_usage", len(keys), *keys, *arguments)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            log.warning("usage samples from %s not stored: %s", node_id, exc)
            return 0
        kept = 0
        for reply in replies:
            if isinstance(reply, Exception):
                log.warning("usage samples from %s not stored: %s", node_id, reply)
            elif reply > 0:
                kept += int(reply)
        return kept

    async def samples(self, task_id: str) -> list[pb.UsageSample]:
        """The task's points in time order, the samples not in a point yet averaged last."""
        points, state = usage_keys(task_id)
        pipe = self.db.pipeline(transaction=False)
        pipe.lrange(points, 0, -1)
        pipe.hmget(state, ["n", "t", "c", "m"])
        raw, (n, t, c, m) = await pipe.execute()
        found = [parse_point(item) for item in raw]
        if n and int(n) > 0:
            count = int(n)
            found.append(
                pb.UsageSample(
                    time=round(float(t) / count, 3),
                    cpu_cores=round(float(c) / count, 4),
                    memory_bytes=round(int(m) / count),
                )
            )
        return found


def usage_keys(task_id: str, with_task: bool = False) -> list[str]:
    """The task's usage keys (points, state), after its record's with ``with_task``."""
    found = [keys.TASK_USAGE.format(id=task_id), keys.TASK_USAGE_STATE.format(id=task_id)]
    return [keys.TASK.format(id=task_id), *found] if with_task else found
