"""A price cap is a limit, end to end: a real pool and Redis, a worker running a busy loop in real
Docker with a cap that buys about 3 s of its request. The agent stops it when the cap is used
up: it fails saying "price cap reached", the worker is paid exactly the cap, the submitter gets
the rest back, and the ledger's audit agrees. A retried task's cap is one cap for all its
attempts; a cap too small to buy a second is refused before any money moves."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from flask.testing import FlaskClient

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun, Usage
from hivemind_cluster.client.views import describe_task
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.accounts import ESCROW, REGISTRATION_GRANT
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.pool import watchdog
from hivemind_cluster.protos import pool_pb2 as pb
from tests.integration.test_accounting import balance, in_an_audited_cluster, sync_ledger
from tests.integration.test_billing import BUSYBOX, HELD, docker_executor, fresh_name
from tests.support.poolkit import LOSS_TIMEOUT, Cluster, ScriptedExecutor, run_in_cluster
from tests.support.webkit import api_login, register_in_browser, web_cluster

pytestmark = pytest.mark.privileged
BUSY_LOOP = ["sh", "-c", "while :; do :; done"]
CAP_SECONDS = 3


def busy_loop(cap: int) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        image=BUSYBOX,
        command=BUSY_LOOP,
        resources=HELD.to_proto(),
        timeout_seconds=120,
        max_cost=cap,
    )


@contextlib.contextmanager
def docker_tasks(state_dir: Path) -> Iterator[DockerExecutor]:
    """A real executor for a worker; its containers and directories are removed after."""
    executor = docker_executor(state_dir / "docker-tasks")
    try:
        yield executor
    finally:
        executor.remove_leftovers()
        executor.client.close()


@in_an_audited_cluster()
async def test_a_busy_loop_is_stopped_when_its_cost_reaches_its_cap_and_pays_exactly_the_cap(
    cluster: Cluster,
) -> None:
    cap = RateCard.from_settings(cluster.settings).cost(HELD, CAP_SECONDS)
    user = await cluster.operator_stub()
    hub = await cluster.operator_stub("hub")
    with docker_tasks(cluster.settings.path) as executor:
        await cluster.start_worker("w1", executor)
        worker_before = await balance(hub, "w1")
        task = await user.Submit(busy_loop(cap))
        await cluster.wait_status(user, task.id, {"running"}, timeout=30)
        began = time.monotonic()
        ended = await cluster.wait_status(user, task.id, set(FINAL_STATES), timeout=60)
        took = time.monotonic() - began
        settled = await cluster.wait_settled(user, task.id)
    print(
        f"cap of {CAP_SECONDS} s: ended {took:.2f} s after it was running, "
        f"{settled.usage.wall_seconds:.2f} s wall"
    )
    assert took < 10 * CAP_SECONDS  # a sanity bound only; it ran to its timeout before
    assert (ended.status, ended.error) == ("failed", f"price cap reached after {CAP_SECONDS}s")
    assert CAP_SECONDS <= settled.usage.wall_seconds < 10 * CAP_SECONDS
    assert settled.cost == cap
    assert await balance(user) == REGISTRATION_GRANT - cap  # the rest came back
    assert await balance(hub, "w1") == worker_before + cap
    assert (await hub.Balance(pb.AccountRef(account="w1"))).earned == cap
    assert await balance(hub, ESCROW) == 0


def honours_its_cap(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    """As the agent does: runs until the cap is used up (a little past it, as a kill takes)."""
    assert task.price_cap_seconds > 0, task
    wall = task.price_cap_seconds + 0.4
    error = f"price cap reached after {task.price_cap_seconds:g}s"
    return Outcome("failed", 137, error, Usage(wall, 1 << 20, wall, 0.0), None)


@in_an_audited_cluster(heartbeat_timeout=LOSS_TIMEOUT)
async def test_a_retried_task_spends_at_most_its_cap_over_all_its_attempts(
    cluster: Cluster,
) -> None:
    rates = RateCard.from_settings(cluster.settings)
    cap = rates.cost(HELD, CAP_SECONDS)
    user = await cluster.operator_stub()
    hub = await cluster.operator_stub("hub")
    survivor = ScriptedExecutor(honours_its_cap)
    task = await cluster.lose_a_worker_mid_task(user, busy_loop(cap), survivor)
    ended = await cluster.wait_status(user, task.id, set(FINAL_STATES), timeout=30)
    settled = await cluster.wait_settled(user, task.id)
    assert (ended.status, ended.attempt) == ("failed", 2)
    assert ended.error.startswith("price cap reached")
    # Each attempt is told the whole cap's time: only the final attempt is ever paid.
    assert survivor.started[0].price_cap_seconds == rates.seconds_bought(HELD, cap)
    assert settled.cost == cap
    assert await balance(user) == REGISTRATION_GRANT - cap
    assert (await hub.Balance(pb.AccountRef(account="doomed"))).earned == 0
    assert (await hub.Balance(pb.AccountRef(account="survivor"))).earned == cap
    assert await balance(hub, ESCROW) == 0


@in_an_audited_cluster()
async def test_a_cap_that_buys_less_than_a_second_is_refused_and_costs_nothing(
    cluster: Cluster,
) -> None:
    await cluster.start_worker("w1", ScriptedExecutor())
    user = await cluster.operator_stub()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await user.Submit(busy_loop(1))  # --max-cost 0.000001
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the least it may be is 0.000114 CPT (1 s)" in str(refused.value.details())
    assert await balance(user) == REGISTRATION_GRANT
    assert (await user.List(pb.ListRequest())).tasks == []


def ignores_its_cap(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    """An agent that does not stop the task at its cap: it runs until the pool cancels it."""
    cancel.wait(60)
    return Outcome("cancelled", 137, "cancelled", Usage(9.0, 1 << 20, 9.0, 0.0), None)


def test_the_pool_ends_a_task_past_its_cap_when_its_agent_does_not(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchdog, "ATTEMPT_GRACE", 1)

    async def body(cluster: Cluster) -> None:
        rates = RateCard.from_settings(cluster.settings)
        cap = rates.cost(HELD, 2)
        executor = ScriptedExecutor(ignores_its_cap)
        await cluster.start_worker("w1", executor)
        user = await cluster.operator_stub()
        task = await user.Submit(busy_loop(cap))
        ended = await cluster.wait_status(user, task.id, set(FINAL_STATES), timeout=30)
        settled = await cluster.wait_settled(user, task.id)
        assert (ended.status, ended.error) == (
            "failed",
            "price cap reached: no result 1s after its cap ran out (2s)",
        )
        # It did not say how long it held the request: its worker is not paid.
        assert settled.cost == 0 and await balance(user) == REGISTRATION_GRANT
        await cluster.until(lambda: not cluster.workers["w1"][0].running, "the task cancelled")

    run_in_cluster(redis_server, tmp_path, body)
    ledger, client = sync_ledger(redis_server)
    with client:
        assert ledger.audit()["ok"]


def settled_view(api: FlaskClient, headers: dict[str, str], task_id: str) -> Any:
    """The task as the API shows it once settled (a minute at the most)."""
    path, deadline = f"/api/v1/tasks/{task_id}", time.monotonic() + 60
    while time.monotonic() < deadline:
        task = api.get(path, headers=headers).get_json()
        if task["settled"]:
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} was not settled")


def test_the_task_page_and_status_say_the_price_cap_was_reached(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with web_cluster(redis_server, tmp_path) as world, docker_tasks(tmp_path) as executor:
        world.run(world.cluster.start_worker("w1", executor))
        app = world.app()
        browser, api, name = app.test_client(), app.test_client(), fresh_name()
        register_in_browser(browser, name)
        headers = api_login(api, name)
        body = {
            "image": BUSYBOX,
            "cpu": "1",
            "memory": "256M",
            "timeout": 120,
            "command": BUSY_LOOP,
            "max_cost": "0.000341",
        }
        submitted = api.post("/api/v1/tasks", headers=headers, json=body).get_json()
        task = settled_view(api, headers, submitted["id"])
        page = browser.get(f"/tasks/{task['id']}").get_data(as_text=True)
    assert task["error"] == "price cap reached after 3s"
    assert "— price cap reached after 3s" in page
    paid = "0.000341 CPT paid to the worker, 0 CPT refunded (cap 0.000341 CPT)"
    assert f"{paid}: the price cap was reached" in page
    assert "failed, exit code 137 — price cap reached after 3s" in describe_task(task)
