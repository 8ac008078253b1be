"""A task's CPU and memory over its run, kept by the pool (pool/taskusage.py, real Redis):
bounded, the whole run kept at a coarser resolution when long, fenced as logs are, each
sample kept once however often it is sent; and a real Docker task burning a core, whose
view then shows its samples near one core, and the agent's metrics count its phases."""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from unittest import mock

import pytest
from prometheus_client import REGISTRY

from hivemind_cluster.agent import metrics, usagesamples
from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import NO_USAGE, OnOutput, Outcome, TaskRun
from hivemind_cluster.client.views import task_view
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool.taskstore import TaskStore
from hivemind_cluster.pool.taskusage import MAX_POINTS
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.integration.test_pool import submit
from tests.integration.test_taskstore import assigned_task, on_a_task_store, result
from tests.support.poolkit import Cluster, ScriptedExecutor, in_a_cluster, run_in_cluster
from tests.support.prerequisites import require_docker_images

pytestmark = pytest.mark.privileged

START = 1_700_000_000.0
PYTHON = "hivemind/python:3.11"
BURN_SECONDS = 8
BURN = f"import time\nend = time.time() + {BURN_SECONDS}\nwhile time.time() < end: pass\n"


def samples(
    task_id: str, attempt: int, figures: list[tuple[float, float, int]]
) -> list[pb.TaskUsage]:
    """(seconds after START, cores, memory) samples of an attempt, 64 to a heartbeat entry
    as an agent long disconnected would send them at most."""
    made = [pb.UsageSample(time=START + t, cpu_cores=c, memory_bytes=m) for t, c, m in figures]
    return [
        pb.TaskUsage(task_id=task_id, attempt=attempt, samples=made[i : i + 64])
        for i in range(0, len(made), 64)
    ]


def seconds(points: list[pb.UsageSample]) -> list[float]:
    return [round(p.time - START, 3) for p in points]


@on_a_task_store
async def test_an_attempts_samples_are_kept_in_order_and_once_however_often_sent(
    store: TaskStore,
) -> None:
    task = await assigned_task(store)
    beat = samples(task.id, 1, [(5, 1.0, 100), (10, 0.5, 200)])
    assert await store.record_usage("w1", beat) == 2
    assert await store.record_usage("w1", beat) == 0  # sent again after a reconnect
    # One too close to the last (a flood), one older, two new.
    later = samples(task.id, 1, [(10.5, 9.0, 1), (3, 9.0, 1), (15, 0.25, 300), (20, 0.0, 0)])
    assert await store.record_usage("w1", later) == 2
    points = await store.usage_samples(task.id)
    assert seconds(points) == [5, 10, 15, 20]
    assert [(p.cpu_cores, p.memory_bytes) for p in points] == [
        (1.0, 100),
        (0.5, 200),
        (0.25, 300),
        (0.0, 0),
    ]


@on_a_task_store
async def test_a_long_run_is_kept_whole_at_a_coarser_resolution_in_bounded_space(
    store: TaskStore,
) -> None:
    task = await assigned_task(store)
    # 3 h at 5 s: 2160 samples, the CPU rising from 0 to 2 cores, the memory steady.
    count = 2160
    figures = [(5.0 * (i + 1), round(2 * i / (count - 1), 4), 64 << 20) for i in range(count)]
    entries = samples(task.id, 1, figures)
    for start in range(0, len(entries), 256):  # heartbeats of at most 256 entries
        await store.record_usage("w1", entries[start : start + 256])
    points = await store.usage_samples(task.id)
    assert MAX_POINTS // 2 <= len(points) <= MAX_POINTS
    times = seconds(points)
    assert times == sorted(times)
    # The whole run: its first point averages the first samples, its last the last ones.
    assert times[0] < 5 * 10 and times[-1] > 5 * (count - 10)
    assert all(p.memory_bytes == 64 << 20 for p in points)
    # The average over the run survives the averaging in pairs (every point the average
    # of as many samples as the others, the last perhaps of fewer).
    mean = sum(p.cpu_cores for p in points[:-1]) / (len(points) - 1)
    assert math.isclose(mean, 1.0, abs_tol=0.02)
    state = await store.db.hgetall(keys.TASK_USAGE_STATE.format(id=task.id))
    assert int(state["stride"]) == 4


@on_a_task_store
async def test_only_the_current_attempt_on_its_node_is_kept_and_a_new_one_starts_afresh(
    store: TaskStore,
) -> None:
    task = await assigned_task(store)
    assert await store.record_usage("w2", samples(task.id, 1, [(5, 1.0, 1)])) == 0  # other node
    assert await store.record_usage("w1", samples(task.id, 2, [(5, 1.0, 1)])) == 0  # no attempt 2
    assert await store.record_usage("w1", samples(task.id, 1, [(5, 1.0, 1)])) == 1
    assert await store.requeue(task.id, 1, "w1", "node w1 lost") == "lost"
    assert await store.record_usage("w1", samples(task.id, 1, [(10, 1.0, 1)])) == 0  # superseded
    assert seconds(await store.usage_samples(task.id)) == [5]  # the last run's, until the next
    assert await store.assign_many([(task.id, 2, "w2")]) == [True]
    assert await store.record_usage("w2", samples(task.id, 2, [(7, 0.5, 2)])) == 1
    assert seconds(await store.usage_samples(task.id)) == [7]
    assert await store.finish("w2", result(task.id, 2)) == "succeeded"
    # The last samples may follow the result on the stream: the attempt that ended it.
    assert await store.record_usage("w2", samples(task.id, 2, [(12, 0.5, 2)])) == 1
    assert await store.record_usage("w1", samples(task.id, 1, [(30, 0.5, 2)])) == 0
    assert seconds(await store.usage_samples(task.id)) == [7, 12]


@on_a_task_store
async def test_bad_samples_and_unknown_tasks_are_dropped_without_an_error(
    store: TaskStore,
) -> None:
    task = await assigned_task(store)
    bad = [
        pb.UsageSample(time=START + 1, cpu_cores=float("nan"), memory_bytes=1),
        pb.UsageSample(time=START + 2, cpu_cores=-1.0, memory_bytes=1),
        pb.UsageSample(time=float("inf"), cpu_cores=1.0, memory_bytes=1),
        pb.UsageSample(time=START + 3, cpu_cores=1.0, memory_bytes=-5),
        pb.UsageSample(time=START + 4, cpu_cores=0.5, memory_bytes=5),
    ]
    entries = [
        pb.TaskUsage(task_id=task.id, attempt=1, samples=bad),
        pb.TaskUsage(task_id="../../etc", attempt=1, samples=bad[-1:]),
        pb.TaskUsage(task_id="t000000000000", attempt=1, samples=bad[-1:]),
    ]
    assert await store.record_usage("w1", entries) == 1
    assert seconds(await store.usage_samples(task.id)) == [4]
    assert await store.usage_samples("t000000000000") == []


def sampled_every_quarter_second(
    task: TaskRun, on_output: OnOutput, cancel: threading.Event
) -> Outcome:
    """Twelve readings a second apart (by the clocks it gives), each a sample, taken while
    the test cuts the stream: half a core, 1 MiB more memory each time."""
    task.usage.every = 1
    for n in range(12):
        task.usage.reading(n * 0.5, n << 20, monotonic=n, wall=START + n)
        time.sleep(0.25)
    return Outcome("succeeded", 0, "", NO_USAGE)


@in_a_cluster()
async def test_samples_sent_again_after_reconnects_are_stored_once_and_none_is_lost(
    cluster: Cluster,
) -> None:
    """Once the first samples are stored, the hub drops the agent's stream three times while
    the task is sampled: after a reconnect the agent sends its last samples again (the
    stream lost may have held them), and the pool keeps each once."""
    assert cluster.pool is not None
    store = cluster.pool.tasks
    record_usage = store.record_usage
    received: list[int] = []

    async def counted(node_id: str, usage: Iterable[pb.TaskUsage]) -> int:
        usage = list(usage)
        received.extend(round(s.time - START) for entry in usage for s in entry.samples)
        return await record_usage(node_id, usage)

    await cluster.start_worker("w1", ScriptedExecutor(sampled_every_quarter_second))
    stub = await cluster.operator_stub()
    with mock.patch.object(store, "record_usage", counted):
        task = await stub.Submit(submit(["x"]))
        await cluster.until(lambda: bool(received), "the first samples stored")
        for _ in range(3):
            session = cluster.sessions().get("w1")
            if session is not None:
                session.close()
            await asyncio.sleep(0.3)
        await cluster.wait_status(stub, task.id, {"succeeded"}, timeout=60)
        found = await usage_once_stored(stub, task.id, 11)
    assert [s["time"] - START for s in found] == list(range(1, 12))
    assert {s["cpu_cores"] for s in found} == {0.5}
    assert [s["memory_bytes"] for s in found] == [n << 20 for n in range(1, 12)]
    assert sorted(set(received)) == list(range(1, 12))
    assert len(received) > len(set(received)), "no sample was sent again after a reconnect"


def agent_counts() -> dict[str, float]:
    """The agent's phase histogram counts and its succeeded counter (0 before any)."""
    found = {
        phase: REGISTRY.get_sample_value(
            "hivemind_agent_task_phase_seconds_count", {"phase": phase}
        )
        for phase in metrics.PHASES
    }
    found["succeeded"] = REGISTRY.get_sample_value(
        "hivemind_agent_tasks_finished_total", {"status": "succeeded"}
    )
    return {name: value or 0.0 for name, value in found.items()}


async def usage_once_stored(
    stub: pb_grpc.TasksAsyncStub, task_id: str, count: int
) -> list[dict[str, float]]:
    """The task's view's samples once it has ``count`` (its last ones follow its result)."""
    deadline = time.monotonic() + 30
    while True:
        found: list[dict[str, float]] = task_view(await stub.Get(pb.TaskRef(task_id=task_id)))[
            "usage_samples"
        ]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"only {len(found)} usage samples arrived"
        await asyncio.sleep(0.1)


def test_a_docker_task_burning_a_core_shows_its_cpu_and_memory_over_its_run(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container busy on one core for 8 s, sampled every second (instead of 5): its view
    has a sample a second or so, each near one core (the limit) with memory in use, and
    the agent counted one more attempt through each of its phases, and one more success."""
    monkeypatch.setattr(usagesamples, "SAMPLE_SECONDS", 1.0)
    client = require_docker_images(PYTHON)
    node_id = f"test-{secrets.token_hex(4)}"

    async def body(cluster: Cluster) -> None:
        executor = DockerExecutor(Path(cluster.settings.state_dir) / "work", node_id, client=client)
        before = agent_counts()
        try:
            await cluster.start_worker(node_id, executor)
            stub = await cluster.operator_stub()
            request = submit(["python", "-c", BURN])
            request.image = PYTHON
            task = await stub.Submit(request)
            done = await cluster.wait_status(stub, task.id, {"succeeded", "failed"}, timeout=120)
            assert done.status == "succeeded", done.error
            found = await usage_once_stored(stub, task.id, BURN_SECONDS - 2)
        finally:
            left_behind = executor.remove_leftovers()
        assert left_behind == 0, "a task container was left behind"
        times = [s["time"] for s in found]
        assert times == sorted(times) and done.started_at - 5 < times[0] <= times[-1]
        busy = [s["cpu_cores"] for s in found if s["cpu_cores"] > 0.3]
        assert len(busy) >= BURN_SECONDS - 3, found
        assert all(s["cpu_cores"] < 1.5 for s in found), found  # its limit is one core
        assert all(s["memory_bytes"] > 0 for s in found), found
        counted = {name: n - before[name] for name, n in agent_counts().items()}
        # No requirements.txt: no dependency phase.
        assert counted == {
            "image_pull": 1,
            "dependency_install": 0,
            "container_start": 1,
            "run": 1,
            "succeeded": 1,
        }

    try:
        run_in_cluster(redis_server, tmp_path, body)
    finally:
        client.close()
