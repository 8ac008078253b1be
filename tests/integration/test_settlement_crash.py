"""Crash safety of settlement: kill -9 mid-way, restart, everything settled exactly once;
then restart Redis from its AOF and lose nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.accounts import REGISTRATION_GRANT
from hivemind_cluster.pool import store
from hivemind_cluster.pool.accounting import Accounting
from hivemind_cluster.pool.ledger import AsyncLedger, Ledger
from hivemind_cluster.pool.taskstore import TaskStore
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import BUSYBOX_SPEC, redis_client
from tests.support.prerequisites import REPO, require_redis_server
from tests.support.scratch import scratch_redis
from tests.support.settle_outstanding import RATES

pytestmark = pytest.mark.privileged
TASKS = 100
SPEC = BUSYBOX_SPEC


async def prepare(server: RedisServer) -> list[str]:
    """100 tasks with escrow held, run and finished, none settled yet."""
    db = redis_client(server)
    tasks = TaskStore(db, 1 << 20)
    accounting = Accounting(AsyncLedger(db), RATES, tasks)
    await accounting.ledger.genesis()
    await accounting.open("w1", "worker")
    ids = []
    for n in range(TASKS):
        task_id = f"t{n:012x}"
        cap = RATES.price_cap(SPEC.request, SPEC.timeout_seconds)
        await accounting.hold("op", task_id, cap)
        await tasks.submit(SPEC, task_id=task_id, price_cap=cap)
        await tasks.assign_many([(task_id, 1, "w1")])
        usage = pb.Usage(cpu_seconds=1 + n / 100, peak_memory_bytes=10**8, wall_seconds=2)
        result = pb.TaskResult(task_id=task_id, attempt=1, status="succeeded", usage=usage)
        await tasks.finish("w1", result)
        ids.append(task_id)
    await db.aclose()
    return ids


def test_kill_9_while_settling_then_restart_settles_each_task_exactly_once(
    tmp_path: Path,
) -> None:
    require_redis_server()
    with scratch_redis(tmp_path / "redis") as server:
        store.connect(server.bind, server.port, server.password).close()  # loads the Lua
        ids = asyncio.run(prepare(server))
        command = [
            sys.executable,
            "-m",
            "tests.support.settle_outstanding",
            server.bind,
            str(server.port),
            server.password,
        ]
        slowly = [*command, "0.2"]  # 70 tasks still to go take 14 s: the kill lands mid-way
        settler = subprocess.Popen(slowly, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert settler.stdout is not None
        for _ in range(30):
            settler.stdout.readline()
        settler.send_signal(signal.SIGKILL)
        settler.wait()
        client = store.connect(server.bind, server.port, server.password)
        ledger = Ledger(client)
        partly = sum(1 for t in ids if client.hget(f"hm:task:{t}", "settled") == "1")
        assert 30 <= partly < TASKS, "the kill must land in the middle of the settlement"
        assert ledger.audit()["ok"]
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)  # the restart
        assert all(client.hget(f"hm:task:{t}", "settled") == "1" for t in ids)
        moves = Counter((e.task, e.key.split(":")[0]) for e in ledger.journal() if e.task)
        assert all(
            moves[(t, "escrow")] == moves[(t, "pay")] == moves[(t, "refund")] == 1 for t in ids
        )
        report = ledger.audit()
        assert report["ok"], report
        earned = ledger.balance("w1")
        expected = TASKS * RATES.cost(SPEC.request, 2)  # each held its request for 2 s
        assert earned - REGISTRATION_GRANT == expected == ledger.earned("w1")
        balances = {a["account"]: a["balance"] for a in ledger.accounts()}
        client.close()
        # Restart Redis from its AOF: nothing lost.
        server.stop()
        server.start()
        client = store.connect(server.bind, server.port, server.password)
        ledger = Ledger(client)
        assert {a["account"]: a["balance"] for a in ledger.accounts()} == balances
        assert ledger.audit() == report
        client.close()
