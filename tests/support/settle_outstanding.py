"""Settle every ended, unsettled task, printing each as it goes (the crash test kills it).

python -m tests.support.settle_outstanding HOST PORT PASSWORD [PAUSE_SECONDS]

PAUSE_SECONDS (default 0) between tasks keeps the settlement going long enough for the
test's kill to land in its middle however slowly the test process runs.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.pool.accounting import Accounting
from hivemind_cluster.pool.ledger import AsyncLedger
from hivemind_cluster.pool.taskstore import TaskStore

RATES = RateCard(cpu_second=100, gb_second=50, gpu_second=2000)


async def main(host: str, port: str, password: str, pause: str = "0") -> None:
    db = aioredis.Redis(host=host, port=int(port), password=password, decode_responses=True)
    tasks = TaskStore(db, 1 << 20)
    accounting = Accounting(AsyncLedger(db), RATES, tasks)
    await accounting.ledger.genesis()
    for task_id in await tasks.unsettled():
        await accounting.settle(task_id)
        print(task_id, flush=True)
        await asyncio.sleep(float(pause))
    await db.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
