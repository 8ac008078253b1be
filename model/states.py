"""The states of tasks and workers, as every side spells them (they are stored as these
strings in Redis and sent in messages)."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"  # its node was lost: the task waits in the queue for a retry


PENDING_STATES = (TaskState.QUEUED, TaskState.LOST)
ACTIVE_STATES = (TaskState.ASSIGNED, TaskState.RUNNING)
FINAL_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.TIMED_OUT)
ALL_STATES = (*PENDING_STATES, *ACTIVE_STATES, *FINAL_STATES)
# What an agent may report when an attempt ends. "interrupted": the agent stopped the
# task itself (draining past its window); the pool requeues it.
INTERRUPTED = "interrupted"
REPORTED_STATES = (*FINAL_STATES, INTERRUPTED)


class NodeState(StrEnum):
    """A worker's live state (``hm:worker:{id}`` "state")."""

    READY = "ready"
    DRAINING = "draining"
    OFFLINE = "offline"
    LOST = "lost"


MAX_ROWS = 1000  # the most rows (tasks, movements, log entries) one request returns
