"""The pool's history sampler (pool/history.py) on a real pool with connected agents: what
it records is what the agents' heartbeats and the scheduler say, and the series of a node
that left are forgotten. The interval is patched to 0.2 s so that samples come quickly."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from hivemind_cluster.agent import worker as agent_worker
from hivemind_cluster.core import history as store
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants as mesh_keys
from hivemind_cluster.model import series
from hivemind_cluster.pool import history
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import (
    TWO_CPUS,
    Cluster,
    GiB,
    ScriptedExecutor,
    run_in_cluster,
    succeed_after,
)
from tests.support.scratch import connect_with_every_library

pytestmark = pytest.mark.privileged
INTERVAL = 0.2
# What every fake agent's heartbeat says (exact in bfloat16), instead of this machine's.
CPU_PERCENT, MEMORY_USED = 37.5, 3 * GiB


def steady_heartbeat(running_tasks: int, draining: bool) -> pb.Heartbeat:
    return pb.Heartbeat(
        cpu_percent=CPU_PERCENT,
        memory_used_bytes=MEMORY_USED,
        running_tasks=running_tasks,
        draining=draining,
    )


TWO_CPU_TASK = pb.SubmitRequest(
    image="hivemind/busybox:latest",
    command=["x"],
    resources=pb.Resources(cpu_millis=2000, memory_bytes=GiB),
)


def latest(db: redis.Redis, name: str, since: float) -> float | None:
    points = store.read(db, name, since, time.time() + 1)
    return points[-1][1] if points else None


def has_points(db: redis.Redis, name: str, count: int, since: float) -> Callable[[], bool]:
    return lambda: len(store.read(db, name, since, time.time() + 1)) >= count


async def until_recorded(
    cluster: Cluster, db: redis.Redis, expected: dict[str, float], since: float
) -> None:
    """Until the newest sample of each series is the value expected."""

    def recorded() -> bool:
        return all(latest(db, name, since) == value for name, value in expected.items())

    await cluster.until(recorded, f"samples {expected}", timeout=20)


def test_the_sampler_records_what_the_pool_holds(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "SAMPLE_INTERVAL", INTERVAL)
    monkeypatch.setattr(agent_worker, "heartbeat", steady_heartbeat)
    db = connect_with_every_library(redis_server)
    release = threading.Event()

    async def body(cluster: Cluster) -> None:
        began = time.time()
        executor = ScriptedExecutor(succeed_after(release))
        for node_id in ("w1", "w2"):
            await cluster.start_worker(node_id, executor, capacity=TWO_CPUS)
        stub = await cluster.operator_stub()
        await until_recorded(
            cluster,
            db,
            {series.TASKS_RUNNING: 0, series.TASKS_QUEUED: 0, series.CPU_ALLOCATED: 0},
            began,
        )
        for _ in range(3):  # two fill both workers, the third waits
            await stub.Submit(TWO_CPU_TASK)
        await cluster.until(lambda: len(executor.started) == 2, "two tasks running")
        await until_recorded(
            cluster,
            db,
            {
                series.TASKS_RUNNING: 2,
                series.TASKS_QUEUED: 1,
                series.CPU_ALLOCATED: 1.0,
                series.MEMORY_ALLOCATED: 0.25,  # 2 GiB of 8
            },
            began,
        )

        # Each node's series carries its agent's heartbeat, once the
        # agent has sent one (its first comes a heartbeat interval after it connected).
        for node_id in ("w1", "w2"):
            memory_series = series.node_memory(node_id)
            await cluster.until(has_points(db, memory_series, 3, began), "node samples")
            memory = store.read(db, memory_series, began, time.time() + 1)
            cpu = store.read(db, series.node_cpu(node_id), began, time.time() + 1)
            assert {value for _, value in memory} == {MEMORY_USED}
            assert {value for _, value in cpu} == {CPU_PERCENT}
            steps = [b[0] - a[0] for a, b in itertools.pairwise(memory)]
            assert min(steps) >= INTERVAL - 1e-6  # one point per interval at the most
        release.set()
        await until_recorded(cluster, db, {series.TASKS_RUNNING: 0, series.TASKS_QUEUED: 0}, began)

    try:
        run_in_cluster(redis_server, tmp_path, body)
    finally:
        release.set()
        db.close()


def test_the_series_of_a_node_that_left_are_forgotten(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "SAMPLE_INTERVAL", INTERVAL)
    db = connect_with_every_library(redis_server)

    async def body(cluster: Cluster) -> None:
        assert cluster.pool is not None
        pool = cluster.pool
        for node_id in ("stays", "leaves"):
            await cluster.start_worker(node_id, ScriptedExecutor(), capacity=TWO_CPUS)
        sampler = history.HistorySampler(pool.db, pool.liveness, pool.scheduler)
        heard = lambda: all(s.heartbeat.memory_used_bytes for s in pool.sessions.values())  # noqa: E731
        await cluster.until(heard, "a heartbeat of each")
        await sampler.sample_once()
        for node_id in ("stays", "leaves"):
            assert store.read(db, series.node_cpu(node_id), 0, time.time() + 1) != []
        await cluster.kill_worker("leaves")
        await pool.lose("leaves")
        await pool.db.hset(mesh_keys.NODE.format(id="leaves"), "state", "revoked")
        await sampler.sample_once()
        assert await sampler.forget_departed() == ["leaves"]
        now = time.time() + 1
        assert store.read(db, series.node_cpu("leaves"), 0, now) == []
        assert store.read(db, series.node_memory("leaves"), 0, now) == []
        assert store.read(db, series.node_cpu("stays"), 0, now) != []
        assert await sampler.forget_departed() == []  # nothing left to forget

    try:
        run_in_cluster(redis_server, tmp_path, body)
    finally:
        db.close()
