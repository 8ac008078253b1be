"""Settlement: ended tasks are paid for, and their data let go, off the scheduling path.

``Settlement`` owns the queue of ended tasks; ``run_forever`` closes up to SETTLE_BATCH of
them at once: releases their data in the blob store (``TaskBlobs.release``: inputs
unpinned, the result kept for the retention) and settles them through ``Accounting``
(each settlement uses one Redis connection). This is the one place every ended task
passes, however it ended (a result, a cancel, a last attempt lost, a timeout). Both steps
are idempotent, so a failure is only logged: at start, ``Accounting.start`` settles every
ended task not marked settled, and ``start`` here releases every one not marked released.
"""

from __future__ import annotations

import asyncio
import logging

from hivemind_cluster.pool.accounting import Accounting
from hivemind_cluster.pool.taskdata import TaskBlobs

log = logging.getLogger("hivemind.pool")
SETTLE_BATCH = 20  # ended tasks settled concurrently (each uses one Redis connection)


class Settlement:
    def __init__(self, accounting: Accounting, data: TaskBlobs) -> None:
        self.accounting = accounting
        self.data = data
        self._to_settle: asyncio.Queue[str] = asyncio.Queue()

    def settle(self, task_id: str) -> None:
        """Have an ended task settled (and its data released) soon."""
        self._to_settle.put_nowait(task_id)

    async def start(self) -> None:
        """Release the data of every ended task a crash left unreleased."""
        for task_id in await self.data.tasks.ended_without(("released",)):
            await self.release(task_id)

    async def release(self, task_id: str) -> None:
        try:
            await self.data.release(task_id)
        except Exception as exc:
            log.error("task %s: releasing its data failed (%s); retried at start", task_id, exc)

    async def close(self, task_id: str) -> None:
        """Release the ended task's data, then settle it; each failure retried at start."""
        await self.release(task_id)
        try:
            await self.accounting.settle(task_id)
        except Exception as exc:
            log.error("task %s: settlement failed (%s); retried at start", task_id, exc)

    async def run_forever(self) -> None:
        """Close ended tasks, up to SETTLE_BATCH at once."""
        while True:
            batch = [await self._to_settle.get()]
            while len(batch) < SETTLE_BATCH and not self._to_settle.empty():
                batch.append(self._to_settle.get_nowait())
            await asyncio.gather(*(self.close(task_id) for task_id in batch))
