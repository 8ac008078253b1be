"""The attempt watchdog: attempts that never start, or never end, are taken back.

``AttemptWatchdog`` remembers when this pool placed each attempt (or found it running at
start) with its timeout, and which of them have started. ``overdue`` names those assigned
START_DEADLINE seconds ago and still not started (the agent may be stuck), and those
started more than ATTEMPT_GRACE seconds past their timeout; the pool then cancels them on
their agent and requeues, or ends, each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hivemind_cluster.model.states import TaskState
from hivemind_cluster.protos import pool_pb2 as pb

START_DEADLINE = 60  # seconds an assigned attempt may take to start
ATTEMPT_GRACE = 60  # seconds past its timeout before the pool gives up on an attempt


@dataclass(frozen=True)
class Overdue:
    task_id: str
    attempt: int
    timeout: int
    started: bool

    def reason(self, node_id: str) -> str:
        if self.started:
            return f"no result {ATTEMPT_GRACE}s after its {self.timeout}s timeout"
        return f"not started {START_DEADLINE}s after it was assigned to {node_id}"

    def timed_out(self, reason: str) -> pb.TaskResult:
        """The result the pool records for a started attempt that never reported one."""
        return pb.TaskResult(
            task_id=self.task_id,
            attempt=self.attempt,
            status=TaskState.TIMED_OUT,
            exit_code=-1,
            error=reason,
        )


class AttemptWatchdog:
    def __init__(self) -> None:
        # (task, attempt) -> (monotonic time it was placed, its timeout in seconds)
        self._assigned_at: dict[tuple[str, int], tuple[float, int]] = {}
        self._started: set[tuple[str, int]] = set()

    def watch(self, task_id: str, attempt: int, timeout_seconds: int, since: float) -> None:
        self._assigned_at[(task_id, attempt)] = (since, timeout_seconds)

    def mark_started(self, task_id: str, attempt: int) -> None:
        self._started.add((task_id, attempt))

    def forget(self, task_id: str, attempt: int) -> None:
        """The attempt ended (or moved on): it is watched no more."""
        self._assigned_at.pop((task_id, attempt), None)
        self._started.discard((task_id, attempt))

    def overdue(self) -> list[Overdue]:
        now = time.monotonic()
        found = []
        for (task_id, attempt), (assigned, timeout) in self._assigned_at.items():
            started = (task_id, attempt) in self._started
            limit = timeout + ATTEMPT_GRACE if started else START_DEADLINE
            if now - assigned > limit:
                found.append(Overdue(task_id, attempt, timeout, started))
        return found
