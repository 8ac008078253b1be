"""Money around tasks, through the pool's gRPC API with a real Redis: escrow, settlement,
refunds, lost attempts, tips; the audit holds after each."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from hivemind_cluster.agent.taskrun import NO_USAGE, OnOutput, Outcome, TaskRun, Usage
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.accounts import ESCROW, REGISTRATION_GRANT
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.pool import store
from hivemind_cluster.pool.ledger import Ledger
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import (
    LOSS_TIMEOUT,
    Cluster,
    ClusterBody,
    FixtureTest,
    ScriptedExecutor,
    pytest_decorator,
    run_in_cluster,
)
from tests.support.settle_outstanding import RATES

pytestmark = pytest.mark.privileged
USAGE = Usage(cpu_seconds=2.5, peak_memory_bytes=200_000_000, wall_seconds=3.0, gpu_seconds=0.0)


def measured(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    return Outcome("succeeded", 0, "", USAGE)


def sync_ledger(redis_server: RedisServer) -> tuple[Ledger, redis.Redis]:
    client = store.connect(redis_server.bind, redis_server.port, redis_server.password)
    return Ledger(client), client


def in_an_audited_cluster(**settings: Any) -> Callable[[ClusterBody], FixtureTest]:
    """As ``in_a_cluster``, and afterwards the ledger's audit must agree: whatever a test
    did with money, no CPT was made or lost."""

    def run(redis_server: RedisServer, tmp_path: Path, body: ClusterBody) -> None:
        run_in_cluster(redis_server, tmp_path, body, **settings)
        ledger, client = sync_ledger(redis_server)
        report = ledger.audit()
        client.close()
        assert report["ok"], report

    return pytest_decorator(run)


def request(cpu: int = 1000, memory: int = 256 << 20, **kw: Any) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        image="hivemind/busybox:latest",
        command=["x"],
        resources=pb.Resources(cpu_millis=cpu, memory_bytes=memory),
        timeout_seconds=60,
        **kw,
    )


async def balance(stub: pb_grpc.TasksAsyncStub, account: str = "") -> int:
    return (await stub.Balance(pb.AccountRef(account=account))).balance


@in_an_audited_cluster()
async def test_the_submitter_pays_exactly_the_cost_and_the_worker_earns_it(
    cluster: Cluster,
) -> None:
    await cluster.start_worker("w1", ScriptedExecutor(measured))
    user = await cluster.operator_stub()
    hub = await cluster.operator_stub("hub")
    assert await balance(user) == REGISTRATION_GRANT
    worker_before = await balance(hub, "w1")
    task = await user.Submit(request())
    cap = RATES.price_cap(Resources(1000, 256 << 20, 0), 60)
    assert task.price_cap == cap
    done = await cluster.wait_status(user, task.id, {"succeeded"})
    settled = await cluster.wait_settled(user, task.id)
    cost = RATES.cost(Resources(1000, 256 << 20, 0), USAGE.wall_seconds)  # what it held
    assert cost == 300 + 41 and settled.cost == cost and done.status == "succeeded"
    assert await balance(user) == REGISTRATION_GRANT - cost
    assert await balance(hub, "w1") == worker_before + cost
    assert (await hub.Balance(pb.AccountRef(account="w1"))).earned == cost
    assert (await user.Balance(pb.AccountRef())).earned == 0
    assert await balance(hub, ESCROW) == 0
    history = (await user.History(pb.HistoryRequest())).entries
    assert [e.reason for e in history][-2:] == [
        f"escrow for task {task.id}",
        f"task {task.id}: unused price cap",
    ]


@in_an_audited_cluster()
async def test_a_cancelled_queued_task_is_refunded_in_full(cluster: Cluster) -> None:
    user = await cluster.operator_stub()
    task = await user.Submit(request(max_cost=5_000_000))
    assert task.price_cap == 5_000_000
    assert await balance(user) == REGISTRATION_GRANT - 5_000_000
    await user.Cancel(pb.TaskRef(task_id=task.id))
    assert (await cluster.wait_settled(user, task.id)).cost == 0
    assert await balance(user) == REGISTRATION_GRANT


@in_an_audited_cluster()
async def test_too_expensive_a_task_is_refused_and_nothing_is_queued_or_moved(
    cluster: Cluster,
) -> None:
    user = await cluster.operator_stub()
    await balance(user)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.Submit(request(max_cost=REGISTRATION_GRANT + 1))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "insufficient balance: the task's price cap is 150.000001 CPT" in (
        refused.value.details() or ""
    )
    assert (await user.List(pb.ListRequest())).tasks == []
    assert await balance(user) == REGISTRATION_GRANT


@in_an_audited_cluster(heartbeat_timeout=LOSS_TIMEOUT)
async def test_a_lost_attempt_is_not_paid_and_the_retry_is_paid_once(cluster: Cluster) -> None:
    user = await cluster.operator_stub()
    hub = await cluster.operator_stub("hub")
    task = await cluster.lose_a_worker_mid_task(user, request(), ScriptedExecutor(measured))
    await cluster.wait_status(user, task.id, {"succeeded"}, timeout=30)
    await cluster.wait_settled(user, task.id)
    assert await balance(hub, "doomed") == REGISTRATION_GRANT
    assert await balance(hub, "survivor") == REGISTRATION_GRANT + 341
    assert await balance(user) == REGISTRATION_GRANT - 341


@in_an_audited_cluster()
async def test_tips_go_to_registered_projects_only(cluster: Cluster) -> None:
    ledger, client = sync_ledger(cluster.redis_server)
    ledger.open_account("numpy", "project")
    client.close()
    user = await cluster.operator_stub()
    entry = await user.Tip(pb.TipRequest(project="numpy", amount=2_000_000, idempotency_key="t1"))
    again = await user.Tip(pb.TipRequest(project="numpy", amount=2_000_000, idempotency_key="t1"))
    assert entry.id == again.id and entry.target == "numpy"
    assert await balance(user) == REGISTRATION_GRANT - 2_000_000
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.Tip(pb.TipRequest(project="op", amount=1))
    assert "not a registered project" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await user.Balance(pb.AccountRef(account="numpy"))
    assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED


@in_an_audited_cluster()
async def test_an_idempotent_resubmission_does_not_charge_twice(cluster: Cluster) -> None:
    user = await cluster.operator_stub()
    first = await user.Submit(request(idempotency_key="nightly"))
    again = await user.Submit(request(idempotency_key="nightly"))
    assert first.id == again.id
    assert await balance(user) == REGISTRATION_GRANT - first.price_cap


@in_an_audited_cluster()
async def test_settlement_ignores_usage_of_a_task_that_never_ran(cluster: Cluster) -> None:
    def fail_fast(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        return Outcome("failed", -1, "image missing", NO_USAGE)

    await cluster.start_worker("w1", ScriptedExecutor(fail_fast))
    user = await cluster.operator_stub()
    task = await user.Submit(request())
    await cluster.wait_status(user, task.id, {"failed"})
    await cluster.wait_settled(user, task.id)
    assert await balance(user) == REGISTRATION_GRANT
