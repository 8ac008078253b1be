"""A container Docker creates but cannot start is a failed task, not a broken executor.

Docker refuses the start of a container whose program is missing, and of a ``--gpus`` task
on a machine without the NVIDIA runtime (``could not select device driver``). Either way
the task must fail once, with Docker's reason, and leave nothing behind: an executor that
raised instead would have the attempt reported interrupted and retried again and again.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import docker
import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import TaskRun
from tests.support.prerequisites import require
from tests.support.registry import has_image

pytestmark = pytest.mark.privileged

BUSYBOX = "hivemind/busybox:latest"


def test_a_container_that_cannot_start_fails_its_task_with_dockers_reason(
    tmp_path: Path,
) -> None:
    available, why = DockerExecutor.probe()
    require(available, f"docker is not available: {why}")
    client = docker.from_env()
    require(has_image(client, BUSYBOX), f"image {BUSYBOX} is missing: run make images")
    node_id = f"test-{secrets.token_hex(4)}"
    (tmp_path / "tasks").mkdir()
    executor = DockerExecutor(tmp_path / "tasks", node_id, client=client)
    task = TaskRun(
        f"t{secrets.token_hex(4)}",
        1,
        BUSYBOX,
        ["/no/such/program"],
        {},
        1000,
        64 << 20,
        0,
        30,
        False,
    )
    try:
        outcome = executor.run(task, lambda _stream, _chunk: None, threading.Event())
        assert outcome.status == "failed" and outcome.exit_code == -1
        assert outcome.error.startswith("docker refused the task: ")
        assert "/no/such/program" in outcome.error
        leftovers = client.containers.list(all=True, filters={"label": f"hivemind.node={node_id}"})
        assert leftovers == []
    finally:
        executor.remove_leftovers()
        client.close()
