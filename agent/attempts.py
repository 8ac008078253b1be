"""The worker's attempts as other threads (the agent's status page) read them.

``Worker.snapshot()`` copies its state into these under a lock; an attempt the pool
superseded (fencing) is shown as ``superseded`` whatever its task did here, since the pool
counts another attempt, or none, in its place.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass, field

# What an ended attempt shows besides the task's own final states: the pool superseded it
# (its node was lost meanwhile, say), or refused its result.
SUPERSEDED = "superseded"
REFUSED = "refused"


@dataclass
class RunningAttempt:
    """An attempt the worker runs (its event loop's own record)."""

    task_id: str
    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)
    interrupted: bool = False
    superseded: bool = False  # the pool has moved on: its result is not sent
    image: str = ""
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class AttemptView:
    """A running attempt, as read from another thread (times are unix seconds)."""

    task_id: str
    attempt: int
    image: str
    started_at: float


@dataclass(frozen=True)
class FinishedAttempt:
    task_id: str
    attempt: int
    status: str
    exit_code: int
    ended_at: float


@dataclass(frozen=True)
class WorkerSnapshot:
    """The worker at one instant. ``since`` is when ``connected`` last changed (None: never
    connected yet); ``last_received`` is the pool's last message (it sends none while idle:
    heartbeats go up only), ``last_sent`` the last one written to the stream."""

    connected: bool
    since: float | None
    last_received: float | None
    last_sent: float | None
    draining: bool
    completed: int
    running: tuple[AttemptView, ...]
    recent: tuple[FinishedAttempt, ...]  # newest first


def restated(recent: collections.deque[FinishedAttempt], key: tuple[str, int], status: str) -> None:
    """Show the recent attempt ``key`` (if listed) with ``status`` instead."""
    for index, finished in enumerate(recent):
        if (finished.task_id, finished.attempt) == key:
            recent[index] = dataclasses.replace(finished, status=status)
