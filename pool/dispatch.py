"""Dispatch: queued tasks become placed attempts, each ``Assign`` sent at once.

``Dispatch`` owns the queued tasks' records (what an ``Assign`` needs) and the wake event
of the schedule loop: a submission, a finished attempt or a (re)connected worker wakes it,
and ``schedule_once`` has the ``Scheduler`` place what fits, records the placements in
Redis in one pipeline, has the watchdog watch each attempt and queues its ``Assign`` on
its worker's stream, saying how long the task's price cap lets it run. ``reconcile``
makes the in-memory queue agree with Redis's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hivemind_cluster.model.states import PENDING_STATES
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool.liveness import Liveness
from hivemind_cluster.pool.messages import assign_message
from hivemind_cluster.pool.metrics import SCHEDULING_PASS, SUBMIT_TO_ASSIGN
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.pool.scheduler import Placement, Scheduler
from hivemind_cluster.pool.taskstore import TaskStore
from hivemind_cluster.pool.watchdog import AttemptWatchdog

log = logging.getLogger("hivemind.pool")
RETRY_AFTER = 0.5  # seconds before a failed scheduling pass is tried again
# Tasks newer than this may be between their Lua call and enqueue (see ``reconcile``).
RECONCILE_SETTLED = 5


class Dispatch:
    def __init__(
        self,
        db: Any,
        tasks: TaskStore,
        scheduler: Scheduler,
        liveness: Liveness,
        watchdog: AttemptWatchdog,
        allow_pulls: bool,
    ) -> None:
        self.db = db
        self.allow_pulls = allow_pulls  # told to each worker in its Assign
        self.tasks = tasks
        self.scheduler = scheduler
        self.liveness = liveness
        self.watchdog = watchdog
        self._queued: dict[str, TaskRecord] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Have the schedule loop look for placements soon."""
        self._wake.set()

    def enqueue(self, record: TaskRecord) -> None:
        self._queued[record.id] = record
        self.scheduler.enqueue(record.id, record.score, record.attempt, record.request)
        self._wake.set()

    def withdraw(self, task_id: str) -> None:
        """The task is no longer queued (cancelled, or not in Redis's queue)."""
        self.scheduler.dequeue(task_id)
        self._queued.pop(task_id, None)

    async def schedule_once(self) -> int:
        """Place what fits now; returns how many ``Assign``s were sent."""
        with SCHEDULING_PASS.time():
            return await self._schedule_once()

    async def _schedule_once(self) -> int:
        placements = self.scheduler.place()
        if not placements:
            return 0
        try:
            recorded = await self.tasks.assign_many(
                [(p.task_id, p.attempt, p.node_id) for p in placements]
            )
        except Exception:
            self._queue_again(placements)
            raise
        now = time.monotonic()
        sent = 0
        for placement, ok in zip(placements, recorded, strict=True):
            record = self._queued.pop(placement.task_id, None)
            if not ok or record is None:
                self.scheduler.release(placement.task_id, placement.attempt)
                continue
            price_cap_seconds = self.watchdog.watch(record, placement.attempt, since=now)
            if self._send_assignment(record, placement, price_cap_seconds):
                sent += 1
                if placement.attempt == 1:
                    SUBMIT_TO_ASSIGN.observe(max(0.0, time.time() - record.submitted_at))
        return sent

    def _queue_again(self, placements: list[Placement]) -> None:
        """Nothing of these placements was recorded: give their capacity back, queue them."""
        for placement in placements:
            self.scheduler.release(placement.task_id, placement.attempt)
            record = self._queued.get(placement.task_id)
            if record is not None:
                self.scheduler.enqueue(record.id, record.score, record.attempt, record.request)

    def _send_assignment(
        self, record: TaskRecord, placement: Placement, price_cap_seconds: float
    ) -> bool:
        """Send the attempt to its worker, with the wall time its price cap buys (the agent
        stops it there)."""
        session = self.liveness.session(placement.node_id)
        if session is None:
            return False  # the worker left: it is lost, or the watchdog requeues the attempt
        session.send(assign_message(record, placement.attempt, self.allow_pulls, price_cap_seconds))
        return True

    async def run_forever(self) -> None:
        """The schedule loop: a pass whenever woken, repeated while it places anything."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self.schedule_once():
                    pass
            except Exception:
                log.exception("scheduling pass failed; retrying")
                await asyncio.sleep(RETRY_AFTER)
                self._wake.set()

    async def reconcile(self) -> None:
        """Redis's queue is the truth: queue what memory misses, drop what it has not."""
        queued = set(await self.db.zrange(keys.QUEUE, 0, -1))
        for task_id in self.scheduler.queued_ids():
            if task_id not in queued:
                self.withdraw(task_id)
        missing = [t for t in queued if not self.scheduler.tracks(t)]
        settled = time.time() - RECONCILE_SETTLED
        for record in await self.tasks.by_ids(missing):
            if record.status in PENDING_STATES and record.submitted_at < settled:
                log.warning("task %s was queued in Redis only: queueing it", record.id)
                self.enqueue(record)
