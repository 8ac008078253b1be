"""The pool's history sampler: every SAMPLE_INTERVAL seconds, one sample of what the pool
already holds in memory, into bounded series in Redis (core/history.py) for the charts.

Per connected worker, its CPU use (percent of the machine) and memory in use, from its
last heartbeat; for the cluster, the share of connected workers' CPU and memory that is
allocated, the attempts holding capacity and the tasks queued. Nothing is asked of an
agent or read from Redis for it: a pass is a loop over the sessions and one pipeline (one
Lua call per RECORD_CHUNK series), so 5,000 agents cost one round trip every 10 s.

Node series are bfloat16 (2 bytes a point: a chart's pixel is coarser than its rounding),
the cluster's float32 (counts stay exact). Every FORGET_EVERY passes the series of nodes
that were sampled and are no longer members are removed; any others expire on their own,
a retention after their last sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from hivemind_cluster.core import history
from hivemind_cluster.mesh import membership
from hivemind_cluster.model import series
from hivemind_cluster.pool.liveness import Liveness
from hivemind_cluster.pool.scheduler import Scheduler

log = logging.getLogger("hivemind.pool")
SAMPLE_INTERVAL = 10.0  # seconds between samples: also the series' fine step
FORGET_EVERY = 360  # passes between looks for departed nodes (an hour at 10 s)


def node_shape(step: float) -> history.Shape:
    return history.Shape(step=step, width=2)


def cluster_shape(step: float) -> history.Shape:
    return history.Shape(step=step, width=4)


class HistorySampler:
    """Samples the pool's live figures; the pool runs ``sample_once`` every interval."""

    def __init__(self, db: Any, liveness: Liveness, scheduler: Scheduler) -> None:
        self.db = db
        self.liveness = liveness
        self.scheduler = scheduler
        self.step = SAMPLE_INTERVAL  # read when made: a test may have patched it
        self._sampled: set[str] = set()  # nodes with series written by this pool
        self._passes = 0

    def node_samples(self) -> dict[str, float]:
        """CPU % and memory used of each connected worker that has sent a heartbeat."""
        samples: dict[str, float] = {}
        for node_id, session in self.liveness.sessions.items():
            beat = session.heartbeat
            if beat.memory_used_bytes <= 0:
                continue  # no heartbeat yet: nothing to say
            samples[series.node_cpu(node_id)] = beat.cpu_percent
            samples[series.node_memory(node_id)] = float(beat.memory_used_bytes)
        return samples

    def cluster_samples(self) -> dict[str, float]:
        """Allocation of connected workers (shares), running and queued tasks."""
        samples = {
            series.TASKS_RUNNING: float(len(self.scheduler.allocations)),
            series.TASKS_QUEUED: float(len(self.scheduler.pending)),
        }
        capacity, allocated = self.scheduler.connected_totals()
        if capacity.cpu_millis > 0:
            samples[series.CPU_ALLOCATED] = allocated.cpu_millis / capacity.cpu_millis
        if capacity.memory_bytes > 0:
            samples[series.MEMORY_ALLOCATED] = allocated.memory_bytes / capacity.memory_bytes
        return samples

    async def sample_once(self, now: float | None = None) -> None:
        nodes = self.node_samples()
        groups = [
            (nodes, node_shape(self.step)),
            (self.cluster_samples(), cluster_shape(self.step)),
        ]
        await history.arecord_groups(self.db, groups, time.time() if now is None else now)
        self._sampled.update(self.liveness.sessions)
        self._passes += 1
        if self._passes % FORGET_EVERY == 0:
            await self.forget_departed()

    async def forget_departed(self) -> list[str]:
        """Remove the series of nodes sampled before that are no longer members."""
        candidates = sorted(self._sampled - set(self.liveness.sessions))
        if not candidates:
            return []
        pipe = self.db.pipeline(transaction=False)
        membership.queue_records(pipe, candidates)
        records: list[Mapping[str, str]] = await pipe.execute()
        departed = [
            node_id
            for node_id, record in zip(candidates, records, strict=True)
            if not membership.is_active(dict(record))
        ]
        for node_id in departed:
            await history.aforget(self.db, series.node_prefix(node_id))
            self._sampled.discard(node_id)
        if departed:
            log.info("history: forgot the series of %d departed nodes", len(departed))
        return departed
