"""The charts of the pages, from what each page has: the mesh page's from the history the
pool samples into Redis (core/history.py, series named in model/series.py), the ledger
page's from its ledger entries, the task page's from the task's usage samples.

Each function returns markup ready for a template (web/charts.py draws it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from markupsafe import Markup

from hivemind_cluster.core import history
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.model import series
from hivemind_cluster.web import charts

# The mesh page's choice of span (``?range=``), and what a node's sparkline covers.
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
DEFAULT_RANGE = "1h"
SPARKLINE_SECONDS = 3600


@dataclass(frozen=True)
class Window:
    name: str  # a key of RANGES
    seconds: int

    @classmethod
    def named(cls, name: str) -> Window:
        """The span the page asked for ("" is the default); InvalidInput for another."""
        name = name or DEFAULT_RANGE
        if name not in RANGES:
            choices = ", ".join(RANGES)
            raise InvalidInput(f"range {name[:20]!r} is not one of {choices}")
        return cls(name, RANGES[name])


@dataclass(frozen=True)
class MeshCharts:
    cluster: list[Markup]  # allocation of CPU and memory, running and queued tasks
    sparklines: dict[str, Markup]  # node id -> its CPU over the last SPARKLINE_SECONDS


CLUSTER_CHARTS = (
    (series.CPU_ALLOCATED, "CPU allocated", charts.share, 1.0),
    (series.MEMORY_ALLOCATED, "Memory allocated", charts.share, 1.0),
    (series.TASKS_RUNNING, "Running tasks", charts.count, 1.0),
    (series.TASKS_QUEUED, "Queued tasks", charts.count, 1.0),
)


def mesh_charts(
    db: redis.Redis, worker_ids: Sequence[str], window: Window, now: float
) -> MeshCharts:
    """The cluster's charts over ``window`` and a CPU sparkline per worker."""
    since = now - window.seconds
    found = history.read_many(db, [name for name, *_ in CLUSTER_CHARTS], since, now)
    cluster = [
        charts.line_chart(
            found[name],
            title=title,
            since=since,
            until=now,
            unit=unit,
            ceiling=ceiling,
            chart_id="chart-" + name.split(":", 1)[1],
        )
        for name, title, unit, ceiling in CLUSTER_CHARTS
    ]
    spark_since = now - SPARKLINE_SECONDS
    cpu = history.read_many(db, [series.node_cpu(i) for i in worker_ids], spark_since, now)
    sparklines = {}
    for node_id in worker_ids:
        points = cpu[series.node_cpu(node_id)]
        latest = f"{points[-1][1]:.0f}% now" if points else "no data yet"
        sparklines[node_id] = charts.sparkline(
            points,
            since=spark_since,
            until=now,
            ceiling=100.0,
            label=f"CPU use over the last hour: {latest}",
        )
    return MeshCharts(cluster, sparklines)


def balance_chart(
    account: str, balance_micro: int, entries: Sequence[Mapping[str, Any]], now: float
) -> Markup:
    """The balance over the time of ``entries`` (oldest first, as the page lists them),
    worked back from the balance now: before each movement it was what it is after it,
    less what the movement brought."""
    points: list[charts.Point] = [(now, float(balance_micro))]
    balance = balance_micro
    for entry in reversed(entries):
        points.append((entry["time"], float(balance)))
        if entry["to"] == account:
            balance -= entry["amount_micro"]
        if entry["from"] == account:
            balance += entry["amount_micro"]
    since = entries[0]["time"] - 1 if entries else now - 3600
    points.append((since, float(balance)))
    return charts.line_chart(
        points[::-1] if entries else [],
        title="Balance",
        since=since,
        until=now,
        unit=charts.cpt,
        chart_id="chart-balance",
        steps=True,
    )


def usage_samples(task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The task's usage over its run (its view's ``usage_samples``: ``[{"time",
    "cpu_cores", "memory_bytes"}, ...]``); [] before the pool reports any."""
    samples = task.get("usage_samples")
    return list(samples) if isinstance(samples, list) else []


def task_charts(task: Mapping[str, Any], now: float) -> list[Markup]:
    """CPU (cores) and memory of the task over its run, up to now or its end."""
    samples = usage_samples(task)
    started = task.get("started_at") or (samples[0]["time"] if samples else task["submitted_at"])
    ended = task.get("ended_at") or now
    if samples:
        started = min(started, samples[0]["time"])
        ended = max(ended, samples[-1]["time"])
    cpu = [(float(s["time"]), float(s["cpu_cores"])) for s in samples]
    memory = [(float(s["time"]), float(s["memory_bytes"])) for s in samples]
    request = task.get("resources") or {}
    return [
        charts.line_chart(
            cpu,
            title="CPU",
            since=started,
            until=ended,
            unit=charts.cores,
            chart_id="chart-task-cpu",
            ceiling=request.get("cpu_millis", 0) / 1000 or None,
        ),
        charts.line_chart(
            memory,
            title="Memory",
            since=started,
            until=ended,
            unit=charts.size,
            chart_id="chart-task-memory",
            ceiling=float(request.get("memory_bytes", 0)) or None,
        ),
    ]
