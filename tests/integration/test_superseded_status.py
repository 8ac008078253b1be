"""The agent's status page shows an attempt the pool superseded as ``superseded`` (issue 13,
point 9b): not ``succeeded`` when it finished while its agent was away and the pool had
given it up, not ``interrupted`` when the agent stopped it on hearing so, and never with
the task's payment (another attempt earned it). Real pool, Redis, gRPC and ``Worker``."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import pytest

from hivemind_cluster.agent.statuspage import LedgerView, tasks_json
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.protos import pool_pb2 as pb
from tests.integration.test_pool import submit
from tests.support.poolkit import (
    LOOPBACK,
    LOSS_TIMEOUT,
    Cluster,
    ScriptedExecutor,
    run_in_cluster,
    succeed_after,
)

pytestmark = pytest.mark.privileged


async def cut_off(cluster: Cluster, worker: Worker) -> Identity:
    """The worker loses its way to the pool: its stream dropped, every reconnect refused
    until ``worker.identity`` is given back the identity this returns."""
    reachable = worker.identity
    worker.identity = dataclasses.replace(reachable, pool_address=f"{LOOPBACK}:1")
    cluster.sessions()[reachable.node_id].close()
    await cluster.until(lambda: not worker.connected, "the worker cut off")
    return reachable


async def cut_off_until_lost(cluster: Cluster, worker: Worker, task_id: str) -> Identity:
    """``cut_off`` until the pool has given the worker's attempt up and requeued the task."""
    reachable = await cut_off(cluster, worker)
    stub = await cluster.operator_stub()
    await cluster.wait_status(stub, task_id, {"lost", "queued"}, timeout=30)
    assert (await stub.Get(pb.TaskRef(task_id=task_id))).attempt == 2
    return reachable


def shown(worker: Worker, payments: dict[str, int]) -> list[tuple[int, str, int | None]]:
    """(attempt, status, earned) of the recent tasks as the page's document lists them."""
    ledger = LedgerView(available=True, account="w1", kind="worker", payments=payments)
    recent = tasks_json(worker.snapshot(), ledger)["recent"]
    return [(t["attempt"], t["status"], t["earned_micro"]) for t in recent]


async def first_attempt_superseded(
    cluster: Cluster, finish_while_away: bool
) -> list[tuple[int, str, int | None]]:
    """Attempt 1 runs on w1, which is cut off until the pool requeues the task; the
    attempt ends while w1 is away (or is still running when w1 is back); attempt 2 then
    runs on w1 again. Returns what the page shows."""
    release = threading.Event()
    worker = await cluster.start_worker("w1", ScriptedExecutor(succeed_after(release)))
    stub = await cluster.operator_stub()
    task = await stub.Submit(submit(["x"]))
    await cluster.until(lambda: len(worker.running) == 1, "attempt 1 running")
    reachable = await cut_off_until_lost(cluster, worker, task.id)
    if finish_while_away:
        release.set()
        await cluster.until(lambda: worker.completed == 1, "attempt 1 ended on w1")
    worker.identity = reachable
    await cluster.until(lambda: worker.completed >= 1, "attempt 1 stopped", timeout=30)
    release.set()
    done = await cluster.wait_status(stub, task.id, {"succeeded"}, timeout=30)
    assert done.attempt == 2 and done.node_id == "w1"
    await cluster.until(lambda: worker.completed == 2, "attempt 2 listed")
    page = shown(worker, {task.id: 1234})
    # The worker goes, and the pool loses it now rather than while it stops: a loss during
    # the pool's shutdown can leave its reaper task running, and the teardown waiting.
    await cluster.kill_worker("w1")
    deadline = time.monotonic() + 30
    while {n.id: n.state for n in (await stub.ListNodes(pb.ListNodesRequest())).nodes}.get(
        "w1"
    ) != "lost":
        assert time.monotonic() < deadline, "the pool never lost w1"
        await asyncio.sleep(0.1)
    return page


@pytest.mark.parametrize("finish_while_away", [True, False], ids=["ended-away", "stopped"])
def test_an_attempt_the_pool_gave_up_shows_superseded(
    redis_server: RedisServer, tmp_path: Path, finish_while_away: bool
) -> None:
    """Whether it succeeded while its agent was away or was stopped on the agent's return
    (it showed ``succeeded`` or ``interrupted``), with no earnings."""

    async def body(cluster: Cluster) -> None:
        assert await first_attempt_superseded(cluster, finish_while_away) == [
            (2, "succeeded", 1234),
            (1, "superseded", None),
        ]

    run_in_cluster(redis_server, tmp_path, body, heartbeat_timeout=LOSS_TIMEOUT)
