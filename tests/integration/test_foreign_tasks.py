"""Another node's task does not exist, as far as ``hivemind-pool`` can tell: every task
command answers exactly what it answers for an id nobody ever used (no existence oracle),
like the web API's uniform 404."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.hubstate import node_state_dir
from tests.support.lab import tool
from tests.support.poolkit import block_until_cancelled, collected
from tests.support.webkit import WebCluster, web_cluster

pytestmark = pytest.mark.privileged
BUSYBOX = ("--image", "hivemind/busybox:latest", "--cpu", "1", "--memory", "64M")


def hold(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    return block_until_cancelled(task, on_output, cancel)


@pytest.fixture
def world(redis_server: RedisServer, tmp_path: Path) -> Iterator[WebCluster]:
    with web_cluster(redis_server, tmp_path / "pool") as found:
        found.start_worker("w1", hold)
        yield found


def pool_cli(identity: Path, verb: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hivemind-pool"), verb, "--identity", str(identity), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_another_nodes_task_is_not_found_like_one_that_never_existed(
    world: WebCluster, tmp_path: Path
) -> None:
    owner, other = (
        node_state_dir(world.run(world.cluster.add_node(name, "operator")), tmp_path / name)
        for name in ("alice-laptop", "bob-laptop")
    )
    submitted = pool_cli(owner, "submit", *BUSYBOX, "--", "sleep", "60")
    assert submitted.returncode == 0, submitted.stderr
    theirs = submitted.stdout.strip()
    nobodys = theirs[:-4] + ("0000" if not theirs.endswith("0000") else "1111")
    for verb, *args in (
        ("status",),
        ("cancel",),
        ("logs",),
        ("wait", "--timeout", "1"),
        ("result", "-o", str(tmp_path / "out")),
    ):
        answers = []
        for task_id in (theirs, nobodys):
            done = pool_cli(other, verb, task_id, *args)
            answers.append((done.returncode, done.stdout, done.stderr.replace(task_id, "ID")))
        assert answers[0] == answers[1], (verb, answers)
        assert answers[0] == (1, "", "error: no task 'ID'\n"), (verb, answers)
    assert pool_cli(owner, "status", theirs).returncode == 0  # still there, and running


def test_the_grpc_status_is_not_found_too(world: WebCluster) -> None:
    async def ask() -> None:
        owner = await world.cluster.operator_stub("alice")
        other = await world.cluster.operator_stub("bob")
        task = await owner.Submit(
            pb.SubmitRequest(image="hivemind/busybox:latest", command=["sleep", "60"])
        )
        ref = pb.TaskRef(task_id=task.id)
        for call in (
            other.Get(ref),
            other.Cancel(ref),
            collected(other.ReadResult(pb.ResultRead(task_id=task.id))),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert refused.value.details() == f"not_found: no task {task.id!r}"

    world.run(ask())
