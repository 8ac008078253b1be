"""The attempt watchdog: attempts that never start, or never end, are taken back.

``AttemptWatchdog`` remembers when this pool placed each attempt (or found it running at
start), with how long it may run: its timeout, or the wall time its price cap buys when that
is less (the agent is told the same and stops it there). ``overdue`` names those assigned
START_DEADLINE seconds ago and still not started (the agent may be stuck), and those
started more than ATTEMPT_GRACE seconds past that limit; the pool then cancels them on
their agent and requeues, or ends, each: timed out, or failed "price cap reached".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hivemind_cluster.model.pricing import PRICE_CAP_REACHED, RateCard
from hivemind_cluster.model.states import TaskState
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.protos import pool_pb2 as pb

START_DEADLINE = 60  # seconds an assigned attempt may take to start
ATTEMPT_GRACE = 60  # seconds past its limit before the pool gives up on an attempt


@dataclass(frozen=True)
class Overdue:
    task_id: str
    attempt: int
    timeout: int
    started: bool
    price_cap_seconds: float = 0.0  # > 0: its price cap, not its timeout, limited it

    def reason(self, node_id: str) -> str:
        if not self.started:
            return f"not started {START_DEADLINE}s after it was assigned to {node_id}"
        if self.price_cap_seconds:
            return f"no result {ATTEMPT_GRACE}s after its cap ran out ({self.price_cap_seconds:g}s)"
        return f"no result {ATTEMPT_GRACE}s after its {self.timeout}s timeout"

    def timed_out(self, reason: str) -> pb.TaskResult:
        """The result the pool records for a started attempt that never reported one: timed
        out, or failed when its price cap had run out (no usage reported: nothing is paid)."""
        if self.price_cap_seconds:
            status, error = TaskState.FAILED, f"{PRICE_CAP_REACHED}: {reason}"
        else:
            status, error = TaskState.TIMED_OUT, reason
        return pb.TaskResult(
            task_id=self.task_id, attempt=self.attempt, status=status, exit_code=-1, error=error
        )


class AttemptWatchdog:
    def __init__(self, rates: RateCard) -> None:
        self.rates = rates
        # (task, attempt) -> (monotonic time it was placed, its timeout, its price cap seconds)
        self._assigned_at: dict[tuple[str, int], tuple[float, int, float]] = {}
        self._started: set[tuple[str, int]] = set()

    def watch(self, record: TaskRecord, attempt: int, since: float) -> float:
        """Watch the task's attempt, placed at ``since``. Returns the wall seconds its price
        cap buys (0: its timeout comes first), which its ``Assign`` tells the agent: every
        attempt may use the whole cap, as only the final one is paid."""
        capped = self.rates.price_cap_seconds(
            record.request, record.timeout_seconds, record.price_cap
        )
        self._assigned_at[(record.id, attempt)] = (since, record.timeout_seconds, capped)
        return capped

    def mark_started(self, task_id: str, attempt: int) -> None:
        self._started.add((task_id, attempt))

    def started_count(self) -> int:
        """How many watched attempts have started (the rest are assigned, not started)."""
        return len(self._started)

    def forget(self, task_id: str, attempt: int) -> None:
        """The attempt ended (or moved on): it is watched no more."""
        self._assigned_at.pop((task_id, attempt), None)
        self._started.discard((task_id, attempt))

    def overdue(self) -> list[Overdue]:
        now = time.monotonic()
        found = []
        for (task_id, attempt), (assigned, timeout, capped) in self._assigned_at.items():
            started = (task_id, attempt) in self._started
            limit = (capped or timeout) + ATTEMPT_GRACE if started else START_DEADLINE
            if now - assigned > limit:
                found.append(Overdue(task_id, attempt, timeout, started, capped))
        return found
