"""The agent's Prometheus metrics of the tasks it runs: how long each phase of an attempt
takes, and how attempts end.

Defined on prometheus-client's default registry, which the agent's status page serves at
``/metrics``. Labels are bounded: a phase or a status, never a task id or an image name
(one series per task would grow the agent's memory and every scrape without end).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import Counter, Histogram

from hivemind_cluster.model.states import REPORTED_STATES, TaskState

IMAGE_PULL = "image_pull"  # the task's image found on the worker, or pulled
DEPENDENCY_INSTALL = "dependency_install"  # its requirements.txt installed, or from the cache
CONTAINER_START = "container_start"  # its container created and started
RUN = "run"  # from the start to the exit (or the kill)
PHASES = (IMAGE_PULL, DEPENDENCY_INSTALL, CONTAINER_START, RUN)
# From a lookup of a local image (milliseconds) to a task's hour.
PHASE_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)

PHASE_SECONDS = Histogram(
    "hivemind_agent_task_phase_seconds",
    "Seconds each phase of a task's attempt took on this agent.",
    ["phase"],
    buckets=PHASE_BUCKETS,
)
TASKS_FINISHED = Counter(
    "hivemind_agent_tasks_finished",
    "Attempts this agent finished, by how they ended (interrupted: handed back to the pool).",
    ["status"],
)
for phase in PHASES:  # every series from the start, at 0: a rate needs the first point
    PHASE_SECONDS.labels(phase=phase)
for status in REPORTED_STATES:
    TASKS_FINISHED.labels(status=str(status))


def observe_phase(phase: str, seconds: float) -> None:
    if phase not in PHASES:
        raise ValueError(f"unknown task phase {phase!r}")
    PHASE_SECONDS.labels(phase=phase).observe(max(seconds, 0.0))


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    """Observe how long the block took, whether or not it raised."""
    began = time.monotonic()
    try:
        yield
    finally:
        observe_phase(phase, time.monotonic() - began)


def count_finished(status: str) -> None:
    """An attempt ended here as ``status`` (anything outside the reported states, which a
    worker never reports, counts as failed: the label stays bounded)."""
    known = status if status in REPORTED_STATES else TaskState.FAILED
    TASKS_FINISHED.labels(status=str(known)).inc()
