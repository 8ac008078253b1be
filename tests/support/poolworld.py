"""A hub with two Docker workers and an operator, in namespaces over a real WireGuard overlay.

Shared by the end-to-end tests of the pool (tests/e2e/test_pool_mesh.py) and of the web UI
(tests/e2e/test_web_mesh.py). Hosts: ``hub``; workers ``w1`` (2 CPUs) and ``w2`` (1 CPU),
each running the real agent service; operator ``op``; ``outsider`` on the underlay only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hivemind_cluster.agent.taskdisk import unmount_leftovers
from tests.support.lab import Host, Lab, Mesh
from tests.support.prerequisites import require, require_root_network

IMAGES = ("hivemind/busybox:latest", "hivemind/python:3.11")


class PoolWorld:
    def __init__(self, lab: Lab, agent_settings: str = "") -> None:
        self.lab = lab
        self.agent_settings = agent_settings  # more agent.toml lines for every worker
        self.hub, self.w1, self.w2, self.op, self.outsider = (
            lab.add_host(name) for name in ("hub", "w1", "w2", "op", "outsider")
        )
        self.mesh = Mesh(lab, self.hub)

    def join_worker(self, host: Host, cpus: str, memory: str) -> None:
        state = self.mesh.agent_dir(host)
        state.mkdir(parents=True, exist_ok=True)
        (state / "agent.toml").write_text(
            f'cpus = "{cpus}"\nmemory = "{memory}"\nlabels = "lab={host.name}"\n'
            "drain_seconds = 30\n" + self.agent_settings
        )
        self.mesh.join(host, self.mesh.token())

    def cli(self, host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``hivemind-pool COMMAND --identity <host's state dir> ARGS…`` in the host's namespace."""
        return self.mesh.pool_cli(host, *args, check=check)

    def cli_json(self, host: Host, *args: str) -> Any:
        return self.mesh.pool_json(host, *args)

    def submit_busybox(self, *command: str, options: tuple[str, ...] = ()) -> dict[str, Any]:
        """``hivemind submit`` from the operator: 1 CPU, 64M, the busybox image."""
        image = ("--image", "hivemind/busybox:latest", "--cpu", "1", "--memory", "64M")
        task: dict[str, Any] = self.cli_json(self.op, "submit", *image, *options, "--", *command)
        return task

    def status(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.cli_json(self.hub, "status", task_id)
        return result

    def node_id(self, host: Host) -> str:
        return str(json.loads(self.mesh.agent(host, "status", "--json").stdout)["node_id"])

    def wait_status(self, task_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        """The task once its status is ``status``."""
        deadline = time.monotonic() + timeout
        while (task := self.status(task_id))["status"] != status:
            assert time.monotonic() < deadline, task
            time.sleep(0.1)
        return task

    def wait_for_workers(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        return self.mesh.wait_for_workers(count, timeout, agents=(self.w1, self.w2))

    def logs(self) -> str:
        return self.mesh.logs(self.w1, self.w2)


def remove_containers(node_id: str) -> None:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=hivemind.node={node_id}"],
        capture_output=True,
        text=True,
        check=False,
    )
    for container in listed.stdout.split():
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)


@contextmanager
def pool_world(workdir: Path, agent_settings: str = "") -> Iterator[PoolWorld]:
    """A hub, workers w1 (2 CPUs, 2G) and w2 (1 CPU, 1G) online in the pool, operator op
    (``agent_settings``: more agent.toml lines for both workers)."""
    require_root_network()
    require(shutil.which("docker") is not None, "docker is not installed (make setup)")
    info = subprocess.run(["docker", "info"], capture_output=True, check=False)
    require(info.returncode == 0, "dockerd is not running (make setup)")
    for image in IMAGES:
        found = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        require(found.returncode == 0, f"image {image} is missing (make images)")
    lab = Lab(workdir)
    node_ids: list[str] = []
    try:
        world = PoolWorld(lab, agent_settings)
        world.mesh.start_hub()
        world.join_worker(world.w1, "2", "2G")
        world.join_worker(world.w2, "1", "1G")
        world.mesh.join(world.op, world.mesh.token(role="operator"))
        node_ids = [world.node_id(h) for h in (world.w1, world.w2)]
        world.wait_for_workers(2)
        yield world
    finally:
        lab.close()
        for node_id in node_ids:
            remove_containers(node_id)
        for work in workdir.glob("*/work"):  # a killed agent's task disks, as its restart would
            unmount_leftovers(work)
