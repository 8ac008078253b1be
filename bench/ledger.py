"""Ledger benchmark: transfers per second on one Redis, and settlements per second.

    python bench/ledger.py [--transfers 200000] [--processes 2] [--runs 3] [--json]

Goal: at least 20,000 transfers per second.

Method. A real redis-server (127.0.0.1, free port, temp dir, AOF everysec as the hub runs
it). Transfers: 1,000 accounts are opened, then ``--processes`` client processes each send
their share of random transfers (``hm_ledger_transfer``: one Lua call each, with its own
idempotency key, journal entry and both balance changes) in pipelines of 200; the figure
is transfers / wall time, median of ``--runs``, and the audit must agree afterwards.
Settlements: 2,000 tasks are run to completion in Redis with escrow held (not timed),
then ``Accounting.settle`` settles them, 50 at a time concurrently (two transfers and a
task update each); the figure is settlements / wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.pool import store
from hivemind_cluster.pool.accounting import Accounting
from hivemind_cluster.pool.ledger import KEYS, AsyncLedger, Ledger
from hivemind_cluster.pool.taskstore import TaskStore
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import BUSYBOX_SPEC
from tests.support.scratch import scratch_dir_with_redis
from tests.support.settle_outstanding import RATES

ACCOUNTS = 1000
BATCH = 200
SPEC = dataclasses.replace(BUSYBOX_SPEC, owner="user")


def send_transfers(address: tuple[str, int, str], worker: int, count: int, run: int) -> None:
    client = store.connect(*address)
    chance = random.Random(worker)
    now = str(time.time())
    for start in range(0, count, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + BATCH, count)):
            source, target = chance.sample(range(ACCOUNTS), 2)
            pipe.fcall(
                "hm_ledger_transfer",
                len(KEYS),
                *KEYS,
                f"a{source}",
                f"a{target}",
                str(chance.randint(1, 1000)),
                "bench",
                "",
                f"r{run}w{worker}n{n}",
                now,
            )
        pipe.execute(raise_on_error=False)
    client.close()


def measure_transfers(server: RedisServer, total: int, processes: int, run: int) -> float:
    address = (server.bind, server.port, server.password)
    context = multiprocessing.get_context("fork")
    share = total // processes
    workers = [
        context.Process(target=send_transfers, args=(address, w, share, run))
        for w in range(processes)
    ]
    started = time.perf_counter()
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    return share * processes / (time.perf_counter() - started)


async def measure_settlements(server: RedisServer, count: int) -> float:
    db = aioredis.Redis(
        host=server.bind, port=server.port, password=server.password, decode_responses=True
    )
    tasks = TaskStore(db, 1 << 20)
    accounting = Accounting(AsyncLedger(db), RATES, tasks)
    await accounting.open("w1", "worker")
    for project in ("user",):
        await accounting.open(project, "user")
    await db.hset("hm:ledger:balances", "user", str(10**15))  # a rich user (audit skipped)
    ids = []
    for n in range(count):
        task_id = f"t{n:012x}"
        await accounting.hold("user", task_id, 1000)
        await tasks.submit(SPEC, task_id=task_id, price_cap=1000)
        await tasks.assign_many([(task_id, 1, "w1")])
        usage = pb.Usage(cpu_seconds=1, peak_memory_bytes=10**8, wall_seconds=2)
        result = pb.TaskResult(task_id=task_id, attempt=1, status="succeeded", usage=usage)
        await tasks.finish("w1", result)
        ids.append(task_id)
    started = time.perf_counter()
    for start in range(0, count, 50):
        await asyncio.gather(*(accounting.settle(t) for t in ids[start : start + 50]))
    elapsed = time.perf_counter() - started
    await db.aclose()
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=200_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settlements", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_dir_with_redis("hivemind-bench-ledger-") as (_workdir, server):
        client = store.connect(server.bind, server.port, server.password)
        ledger = Ledger(client)
        ledger.genesis()
        for n in range(ACCOUNTS):
            ledger.open_account(f"a{n}", "user")
        rates = [
            measure_transfers(server, args.transfers, args.processes, run)
            for run in range(args.runs)
        ]
        audit = ledger.audit()
        settlements = asyncio.run(measure_settlements(server, args.settlements))
        client.close()
    result: dict[str, Any] = {
        "transfers_per_second": round(statistics.median(rates)),
        "transfer_runs": [round(r) for r in rates],
        "transfers_goal": 20_000,
        "audit_ok_after_transfers": audit["ok"],
        "journal_entries": audit["journal_entries"],
        "settlements_per_second": round(settlements),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    median = result["transfers_per_second"]
    runs = ", ".join(f"{r:,}" for r in result["transfer_runs"])
    print(
        f"ledger, one Redis (AOF everysec), {args.processes} client processes, pipelines of "
        f"{BATCH}, median of {args.runs}:\n"
        f"  transfers:   {median:,}/s (runs: {runs}); "
        f"goal >= 20,000: {'met' if median >= 20_000 else 'NOT met'}; "
        f"audit after {audit['journal_entries']:,} entries: {'ok' if audit['ok'] else 'NOT OK'}\n"
        f"  settlements: {result['settlements_per_second']:,}/s "
        f"(Accounting.settle, 50 concurrent, {args.settlements:,} tasks)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
