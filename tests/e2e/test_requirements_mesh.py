"""End to end, as root: a bundle's requirements.txt over a real WireGuard overlay.

Hosts: ``hub``; worker ``w1`` running the real agent service, its ``package_index_url`` the
lab host ``pypi``, which serves a PEP 503 directory of two wheels built here
(tests/support/package_index.py) with ``python -m http.server`` on the underlay; operator
``op`` submitting with the ``hivemind-pool`` CLI. Every task runs with no network.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import Host, Lab
from tests.support.package_index import LabIndex
from tests.support.poolworld import IMAGES, PoolWorld, remove_containers
from tests.support.prerequisites import require, require_root_network

pytestmark = pytest.mark.privileged

INDEX_PORT = 8000
MAIN = "import hmlab\nprint('value', hmlab.VALUE)\n"


class IndexWorld(PoolWorld):
    """The pool world's hosts, plus ``pypi``, the lab host that serves the package index."""

    def __init__(self, lab: Lab, index_root: Path) -> None:
        super().__init__(lab)
        self.pypi: Host = lab.add_host("pypi")
        self.index_log = lab.workdir / "pypi.log"
        self.pypi.popen(
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            self.pypi.ip,
            "--directory",
            str(index_root),
            str(INDEX_PORT),
            log=self.index_log,
        )

    def join_worker_with_index(self, host: Host) -> None:
        state = self.mesh.agent_dir(host)
        state.mkdir(parents=True, exist_ok=True)
        (state / "agent.toml").write_text(
            'cpus = "1"\nmemory = "1G"\n'
            f'package_index_url = "http://{self.pypi.ip}:{INDEX_PORT}/simple/"\n'
        )
        self.mesh.join(host, self.mesh.token())

    def wheel_downloads(self) -> int:
        log = self.index_log.read_text() if self.index_log.exists() else ""
        return sum(".whl " in line and "GET" in line for line in log.splitlines())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexWorld]:
    require_root_network()
    for image in IMAGES:
        found = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        require(found.returncode == 0, f"image {image} is missing (make images)")
    workdir = tmp_path_factory.mktemp("reqlab")
    index = LabIndex(workdir / "index")
    index.add_wheel("hmlabdep", "1.0", "WORD = 'over the overlay'\n")
    index.add_wheel("hmlab", "1.0", "from hmlabdep import WORD as VALUE\n", ("hmlabdep",))
    lab = Lab(workdir)
    node_id = ""
    try:
        world = IndexWorld(lab, index.root)
        world.mesh.start_hub()
        world.join_worker_with_index(world.w1)
        world.mesh.join(world.op, world.mesh.token(role="operator"))
        node_id = world.node_id(world.w1)
        world.mesh.wait_for_workers(1, 30, agents=(world.w1,))
        yield world
    finally:
        lab.close()
        if node_id:
            remove_containers(node_id)


def submitted(world: IndexWorld, tmp_path: Path, requirements: str) -> dict[str, object]:
    bundle = tmp_path / "job"
    bundle.mkdir(exist_ok=True)
    (bundle / "main.py").write_text(MAIN)
    (bundle / "requirements.txt").write_text(requirements)
    # The import runs from a command, not the bundle's main.py: requirements.txt is read from
    # the bundle the pool sent, whatever becomes of its working copy on the worker.
    options = ("--bundle", str(bundle), "--memory", "128M", "--image", "hivemind/python:3.11")
    command = ("--", "python", "-c", MAIN)
    task_id = str(world.cli_json(world.op, "submit", *options, *command)["id"])
    world.cli(world.op, "wait", task_id, check=False)  # non-zero unless it succeeded
    return world.status(task_id)


def settled(world: IndexWorld, task: dict[str, object]) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while not task["settled"]:
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
        task = world.status(str(task["id"]))
    return task


def test_requirements_install_from_the_lab_index_then_come_from_the_cache(
    world: IndexWorld, tmp_path: Path
) -> None:
    task = submitted(world, tmp_path, "hmlab==1.0\n")
    logs = world.cli(world.op, "logs", str(task["id"]))
    assert task["status"] == "succeeded", logs.stderr.splitlines()
    logs = world.cli(world.op, "logs", str(task["id"]))
    assert "value over the overlay" in logs.stdout
    assert "downloading wheels for 1 requirement" in logs.stdout + logs.stderr
    downloads = world.wheel_downloads()
    assert downloads == 2

    again = submitted(world, tmp_path, "hmlab==1.0\n")
    assert again["status"] == "succeeded", again
    logs = world.cli(world.op, "logs", str(again["id"]))
    assert "1 requirement from the cache" in logs.stdout + logs.stderr
    assert world.wheel_downloads() == downloads, "the index was asked for a wheel again"


def test_an_unsatisfiable_requirement_fails_cleanly_and_costs_nothing(
    world: IndexWorld, tmp_path: Path
) -> None:
    task = settled(world, submitted(world, tmp_path, "hmlab==9.9\n"))
    assert task["status"] == "failed", task
    assert str(task["error"]).startswith("requirements.txt cannot be met: "), task
    assert "hmlab==9.9" in str(task["error"])
    assert int(str(task["cost_micro"])) == 0
