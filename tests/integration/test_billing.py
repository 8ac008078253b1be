"""Billing for what a task holds, end to end: a real pool and Redis, a worker running the task
in real Docker; the submitter pays its request for its wall time, the worker earns exactly
that, and the task page shows how the cost came about."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun, Usage
from hivemind_cluster.client.views import TIMES
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.accounts import ESCROW, REGISTRATION_GRANT
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.protos import pool_pb2 as pb
from tests.integration.test_accounting import balance, in_an_audited_cluster
from tests.support.poolkit import Cluster
from tests.support.prerequisites import require_docker_images
from tests.support.webkit import api_login, register_in_browser, web_cluster

pytestmark = pytest.mark.privileged
BUSYBOX = "hivemind/busybox:latest"
HELD = Resources(1000, 256 << 20, 0)  # 1 CPU, 256 MiB


def docker_executor(work_root: Path) -> DockerExecutor:
    """A real executor with a node label of its own, once Docker and the image are there."""
    client = require_docker_images(BUSYBOX)
    return DockerExecutor(work_root, f"bill-{secrets.token_hex(4)}", client=client, pids_limit=64)


@in_an_audited_cluster()
async def test_a_task_that_sleeps_pays_its_request_for_its_wall_time_and_the_worker_earns_it(
    cluster: Cluster,
) -> None:
    rates = RateCard.from_settings(cluster.settings)
    executor = docker_executor(cluster.settings.path / "docker-tasks")
    try:
        await cluster.start_worker("w1", executor)
        user = await cluster.operator_stub()
        hub = await cluster.operator_stub("hub")
        worker_before = await balance(hub, "w1")
        task = await user.Submit(
            pb.SubmitRequest(
                image=BUSYBOX,
                command=["sleep", "1"],
                resources=HELD.to_proto(),
                timeout_seconds=60,
            )
        )
        await cluster.wait_status(user, task.id, {"succeeded"}, timeout=60)
        settled = await cluster.wait_settled(user, task.id)
    finally:
        executor.remove_leftovers()
        executor.client.close()
    # The agent's clock starts once Docker says the container started: a little under 1 s.
    wall = settled.usage.wall_seconds
    assert 0.5 <= wall < 30, settled.usage
    cost = rates.cost(HELD, wall)
    # Held for half a second at least: 50 µCPT for the CPU, 6.7 → 7 for 0.268 GB.
    assert settled.cost == cost >= rates.cost(HELD, 0.5) == 57
    # It slept: what it measurably used stays on the record, and is far below what it held.
    assert settled.usage.cpu_seconds < 0.5 and settled.usage.peak_memory_bytes < 64 << 20
    assert await balance(user) == REGISTRATION_GRANT - cost
    assert await balance(hub, "w1") == worker_before + cost
    assert (await hub.Balance(pb.AccountRef(account="w1"))).earned == cost
    assert await balance(hub, ESCROW) == 0


def held_for_15_seconds(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    return Outcome("succeeded", 0, "", Usage(0.01, 1 << 20, 15.0, 0.0))


def test_the_task_page_shows_the_breakdown_once_settled(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with web_cluster(redis_server, tmp_path) as world:
        world.start_worker("w1", held_for_15_seconds)
        app = world.app()
        browser, api, name = app.test_client(), app.test_client(), fresh_name()
        register_in_browser(browser, name)
        headers = api_login(api, name)
        body = {"image": BUSYBOX, "cpu": "1", "memory": "256M", "timeout": 60, "command": ["x"]}
        task_id = api.post("/api/v1/tasks", headers=headers, json=body).get_json()["id"]
        deadline = time.monotonic() + 15
        while not (task := api.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json())[
            "settled"
        ]:
            assert time.monotonic() < deadline, task
            time.sleep(0.05)
        assert (task["price_cap_micro"], task["cost_micro"]) == (6806, 1702)
        for path in (f"/tasks/{task_id}", f"/tasks/{task_id}?partial=1"):
            page = browser.get(path).get_data(as_text=True)
            assert 'id="task-billing"' in page
            assert shown("<li>15 s x 1 CPU x 0.0001 CPT/CPU-s = 0.0015 CPT</li>") in page
            assert shown("<li>15 s x 0.268435 GB x 0.00005 CPT/GB-s = 0.000202 CPT</li>") in page
            assert "total 0.001702 CPT, cap 0.006806 CPT → paid 0.001702 CPT" in page
            assert "0.01 CPU-s" in page  # the measured usage stays on the page


def shown(text: str) -> str:
    return text.replace(" x ", f" {TIMES} ")


def fresh_name() -> str:
    return f"bill{time.monotonic_ns() % 10**9}"
