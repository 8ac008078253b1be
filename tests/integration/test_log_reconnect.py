"""A task's log arrives whole however its agent's stream comes and goes (issue 13, point 1).

A task prints numbered lines over a few seconds; its agent's stream is cut mid-task (the
pool process goes away and comes back on the same address, or the hub drops the stream),
the task ends while the agent is disconnected, and after the reconnect the log holds every
line, in order, exactly once. Real Redis, real mTLS gRPC, the real ``Worker``; the
executor is scripted, or real Docker (one test). Also: a superseded attempt's late output is
refused, and output the agent could not keep ends the log in a truncation mark.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hivemind_cluster.agent import tasklogs
from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import NO_USAGE, OnOutput, Outcome, TaskRun
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.integration.test_pool import submit
from tests.support.late_result import send_late
from tests.support.poolkit import (
    LOSS_TIMEOUT,
    Behaviour,
    Cluster,
    ScriptedExecutor,
    echo,
    in_a_cluster,
    run_in_cluster,
)
from tests.support.prerequisites import require_docker_images

pytestmark = pytest.mark.privileged

LINES = 12
NUMBERED = [f"line {n}" for n in range(1, LINES + 1)]


def numbered_lines(gap: float) -> Behaviour:
    """Prints ``line 1`` … ``line 12``, one every ``gap`` seconds, and succeeds."""

    def run(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        for line in NUMBERED:
            on_output("stdout", f"{line}\n".encode())
            time.sleep(gap)
        return Outcome("succeeded", 0, "", NO_USAGE)

    return run


async def log_entries(stub: pb_grpc.TasksAsyncStub, task_id: str) -> list[pb.LogEntry]:
    return [e async for e in stub.StreamLogs(pb.LogsRequest(task_id=task_id))]


async def printed_lines(stub: pb_grpc.TasksAsyncStub, task_id: str) -> list[str]:
    """The task's own output as the pool stores it, line by line (system lines left out)."""
    entries = await log_entries(stub, task_id)
    text = b"".join(e.data for e in entries if e.stream in ("stdout", "stderr")).decode()
    return text.splitlines()


async def until_lines_stored(stub: pb_grpc.TasksAsyncStub, task_id: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(await printed_lines(stub, task_id)) < count:
        assert time.monotonic() < deadline, f"{count} lines never reached the pool"
        await asyncio.sleep(0.05)


def ended_while_disconnected(cluster: Cluster, worker: Worker) -> Callable[[], Awaitable[None]]:
    """What ``restart_pool`` awaits while no pool listens: the task ends meanwhile."""

    async def wait() -> None:
        await cluster.until(lambda: worker.completed == 1, "the task ended", timeout=90)
        assert not worker.connected, "the agent must be disconnected when its task ends"

    return wait


async def ends_while_the_pool_is_down(cluster: Cluster, worker: Worker) -> list[str]:
    """Submits a task, takes the pool away after its 4th line is stored, brings it back
    once the task has ended; returns the task's lines as the pool has them at the end."""
    stub = await cluster.operator_stub()
    task = await stub.Submit(
        submit(["sh", "-c", "for i in $(seq 1 12); do echo line $i; sleep 0.5; done"])
    )
    await until_lines_stored(stub, task.id, 4)
    await cluster.restart_pool(while_down=ended_while_disconnected(cluster, worker))
    done = await cluster.wait_status(stub, task.id, {"succeeded"}, timeout=60)
    assert [a.status for a in done.attempts] == ["succeeded"]
    return await printed_lines(stub, task.id)


@in_a_cluster()
async def test_a_task_ending_while_the_pool_is_down_keeps_every_line(cluster: Cluster) -> None:
    worker = await cluster.start_worker("w1", ScriptedExecutor(numbered_lines(0.5)))
    assert await ends_while_the_pool_is_down(cluster, worker) == NUMBERED


@in_a_cluster()
async def test_streams_cut_again_and_again_store_each_line_once(cluster: Cluster) -> None:
    """The hub drops the agent's stream every few tenths of a second while the task prints:
    chunks in flight at each cut are sent again, and stored once."""
    await cluster.start_worker("w1", ScriptedExecutor(numbered_lines(0.25)))
    stub = await cluster.operator_stub()
    task = await stub.Submit(submit(["x"]))
    for _ in range(12):
        await asyncio.sleep(0.3)
        session = cluster.sessions().get("w1")
        if session is not None:
            session.close()
    done = await cluster.wait_status(stub, task.id, {"succeeded"}, timeout=60)
    assert done.attempt == 1
    assert await printed_lines(stub, task.id) == NUMBERED


@in_a_cluster()
async def test_a_docker_task_ending_while_the_pool_is_down_keeps_every_line(
    cluster: Cluster,
) -> None:
    client = require_docker_images("hivemind/busybox:latest")
    node_id = f"test-{secrets.token_hex(4)}"
    executor = DockerExecutor(Path(cluster.settings.state_dir) / "worker", node_id, client=client)
    try:
        worker = await cluster.start_worker(node_id, executor)
        lines = await ends_while_the_pool_is_down(cluster, worker)
    finally:
        left_behind = executor.remove_leftovers()
        client.close()
    assert lines == NUMBERED
    assert left_behind == 0, "a task container was left behind"


@in_a_cluster(heartbeat_timeout=LOSS_TIMEOUT)
async def test_a_superseded_attempts_late_output_is_refused_and_not_logged(
    cluster: Cluster,
) -> None:
    stub = await cluster.operator_stub()
    request = submit(["work"])
    task = await cluster.lose_a_worker_mid_task(stub, request, ScriptedExecutor(echo))
    await cluster.wait_status(stub, task.id, {"succeeded"}, timeout=30)
    # The killed attempt's agent comes back with output it never delivered: with an
    # offset (as agents send it now) and without (as older ones did).
    identity = await cluster.add_node("doomed", "worker")
    for offset in (8, None):
        chunk = pb.LogChunk(task_id=task.id, attempt=1, stream="stdout", data=b"late!\n")
        if offset is not None:
            chunk.offset = offset
        reply = await send_late(identity, pb.AgentMessage(log=chunk))
        assert reply.WhichOneof("kind") == "rejected", reply
        assert reply.rejected.superseded and "no longer current" in reply.rejected.reason
    # What attempt 1 printed while current ("working", if it got out before the kill), then
    # the survivor's echo: nothing late.
    assert await printed_lines(stub, task.id) in (["working", "work"], ["work"])


def test_output_the_agent_could_not_keep_ends_in_a_truncation_mark(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 40 bytes of output while disconnected, the lines past it are dropped
    by the agent, and the log says how many bytes never arrived."""
    monkeypatch.setattr(tasklogs, "BACKLOG_BYTES", 40)

    async def body(cluster: Cluster) -> None:
        worker = await cluster.start_worker("w1", ScriptedExecutor(numbered_lines(0.5)))
        lines = await ends_while_the_pool_is_down(cluster, worker)
        assert 4 <= len(lines) < LINES and lines == NUMBERED[: len(lines)]
        missing = "".join(f"{line}\n" for line in NUMBERED[len(lines) :])
        stub = await cluster.operator_stub()
        (task,) = (await stub.List(pb.ListRequest())).tasks
        *_, mark, ended = [e.data for e in await log_entries(stub, task.id)]
        assert mark.decode() == (
            f"[output truncated: the last {len(missing)} bytes of attempt 1 never reached the pool]"
        )
        assert ended == b"attempt 1 succeeded (exit code 0)"

    run_in_cluster(redis_server, tmp_path, body)
