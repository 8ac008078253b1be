"""The pool's Prometheus metrics: what it counts as it works, and what it is right now.

Counters and histograms are module-level prometheus-client instruments (the default
registry), observed where the work happens: a task entering a state (``TaskStore``), a
scheduling pass and the wait from submission to the first assignment (``Dispatch``), a
worker's stream opened again, a heartbeat, a settlement, the bytes of task data served and
received. Observing one costs about a microsecond.

What the pool *is* (tasks by state, the queue, workers by state, each worker's heartbeat
age, allocation, the ledger's supply and escrow) is read at scrape time by
``pool_families``, on the pool's event loop (the hub's collector hops there: the pool's
state is only ever touched from its loop). No label holds a task id, a user name or free
text: states, phases and outcomes are fixed sets, and ``node`` is a node id, as many as
the cluster has members.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from hivemind_cluster.core.exposition import NodeFamily
from hivemind_cluster.core.units import MICRO
from hivemind_cluster.model.accounts import ESCROW
from hivemind_cluster.pool import constants as keys

if TYPE_CHECKING:
    from hivemind_cluster.pool.pool import Pool

# Seconds: from a millisecond to a day (the wait of a task that queued all day).
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
PASS_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)

TASK_STATE_CHANGES = Counter(
    "hivemind_task_state_changes", "Tasks entering a state, by that state", ["state"]
)
SUBMIT_TO_ASSIGN = Histogram(
    "hivemind_task_submit_to_assign_seconds",
    "From a task's submission to its first assignment",
    buckets=WAIT_BUCKETS,
)
SCHEDULING_PASS = Histogram(
    "hivemind_scheduling_pass_seconds",
    "One scheduling pass: placement, recording it in Redis, sending the assignments",
    buckets=PASS_BUCKETS,
)
STREAMS_OPENED = Counter(
    "hivemind_worker_streams_opened",
    "Worker streams opened: a worker's first since the hub started, or a reconnect",
    ["kind"],
)
HEARTBEATS = Counter("hivemind_heartbeats_received", "Heartbeats received from workers")
SETTLEMENTS = Counter(
    "hivemind_settlements",
    "Ended tasks settled, by outcome (paid, nothing_owed, failed)",
    ["outcome"],
)
SETTLED_CPT = Counter("hivemind_settled_cpt", "CPT paid to workers by settlements")
TASK_DATA_BYTES = Counter(
    "hivemind_task_data_bytes",
    "Bytes of task data through the pool's Blobs service (served: inputs to workers; "
    "received: results from workers)",
    ["direction"],
)


def state_changed(state: str, count: int = 1) -> None:
    if count:
        TASK_STATE_CHANGES.labels(state).inc(count)


async def pool_families(pool: Pool) -> tuple[list[Metric], list[NodeFamily]]:
    """What the pool is now, as metric families (the per-node ones apart: they are written
    by core/exposition.py); on the pool's event loop."""
    scheduler, now = pool.scheduler, time.time()
    started = pool.watchdog.started_count()
    tasks = GaugeMetricFamily(
        "hivemind_tasks", "Tasks queued or holding a worker, by state", labels=["state"]
    )
    tasks.add_metric(["queued"], len(scheduler.pending))
    tasks.add_metric(["assigned"], max(0, len(scheduler.allocations) - started))
    tasks.add_metric(["running"], started)
    queue = GaugeMetricFamily("hivemind_queue_depth", "Tasks waiting for a worker")
    queue.add_metric([], len(scheduler.pending))
    workers = GaugeMetricFamily(
        "hivemind_workers", "Workers the pool knows, by state", labels=["state"]
    )
    counts = {"ready": 0, "draining": 0, "offline": 0}
    for worker in list(scheduler.workers.values()):
        state = "offline" if not worker.connected else "draining" if worker.draining else "ready"
        counts[state] += 1
    for state, count in counts.items():
        workers.add_metric([state], count)
    cpu = GaugeMetricFamily(
        "hivemind_cluster_cpu_cores",
        "CPU of connected workers (capacity, allocated)",
        labels=["kind"],
    )
    memory = GaugeMetricFamily(
        "hivemind_cluster_memory_bytes",
        "Memory of connected workers (capacity, allocated)",
        labels=["kind"],
    )
    for kind, total in zip(("capacity", "allocated"), scheduler.connected_totals(), strict=True):
        cpu.add_metric([kind], total.cpu_millis / 1000)
        memory.add_metric([kind], total.memory_bytes)
    ages = [
        (node_id, max(0.0, now - session.last_heartbeat_wall))
        for node_id, session in list(pool.sessions.items())
    ]
    age = NodeFamily(
        "hivemind_heartbeat_age_seconds",
        "Since each connected worker's last heartbeat",
        "gauge",
        ages,
    )
    return [tasks, queue, workers, cpu, memory, *await ledger_families(pool)], [age]


async def ledger_families(pool: Pool) -> list[Metric]:
    supply, escrow = (
        await pool.db.pipeline(transaction=False)
        .get(keys.LEDGER_SUPPLY)
        .hget(keys.LEDGER_BALANCES, ESCROW)
        .execute()
    )
    families: list[Metric] = []
    for name, text, value in (
        ("hivemind_ledger_supply_cpt", "CPT in existence", supply),
        ("hivemind_ledger_escrow_cpt", "CPT held in escrow for tasks not yet settled", escrow),
    ):
        family = GaugeMetricFamily(name, text)
        family.add_metric([], int(value or 0) / MICRO)
        families.append(family)
    return families
