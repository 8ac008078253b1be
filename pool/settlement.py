"""Settlement: ended tasks are paid for off the scheduling path, in batches.

``Settlement`` owns the queue of ended tasks; ``run_forever`` settles up to SETTLE_BATCH of
them at once through ``Accounting`` (each settlement uses one Redis connection). Settling
is idempotent, so a failure is only logged: ``Accounting.start`` settles every ended task
not marked settled when the pool starts again.
"""

from __future__ import annotations

import asyncio
import logging

from hivemind_cluster.pool.accounting import Accounting

log = logging.getLogger("hivemind.pool")
SETTLE_BATCH = 20  # ended tasks settled concurrently (each uses one Redis connection)


class Settlement:
    def __init__(self, accounting: Accounting) -> None:
        self.accounting = accounting
        self._to_settle: asyncio.Queue[str] = asyncio.Queue()

    def settle(self, task_id: str) -> None:
        """Have an ended task settled soon."""
        self._to_settle.put_nowait(task_id)

    async def run_forever(self) -> None:
        """Settle ended tasks, up to SETTLE_BATCH at once; a failure is retried at start."""
        while True:
            batch = [await self._to_settle.get()]
            while len(batch) < SETTLE_BATCH and not self._to_settle.empty():
                batch.append(self._to_settle.get_nowait())
            outcomes = await asyncio.gather(
                *(self.accounting.settle(task_id) for task_id in batch), return_exceptions=True
            )
            for task_id, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    log.error("task %s: settlement failed (%s); retried at start", task_id, outcome)
