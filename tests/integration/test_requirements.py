"""A bundle's requirements.txt against the real daemon, installed from a lab package index.

The index is a PEP 503 directory of two small wheels built here (``hmlab`` needs
``hmlabdep``), served over HTTP on 127.0.0.1 (tests/support/package_index.py). Each task runs
with no network: its requirements are downloaded by the worker and installed in a container
with no network, then mounted read-only at /deps.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.requirements import Requirements
from hivemind_cluster.agent.taskrun import Outcome
from hivemind_cluster.core.units import MIB
from tests.support.package_index import LabIndex, served
from tests.support.prerequisites import require_docker_images
from tests.support.tasks import a_python_bundle_task

pytestmark = pytest.mark.privileged

PYTHON = "hivemind/python:3.11"
# Imports both lab packages, shows where they came from, and checks what the task cannot do.
MAIN = """
import os, socket, hmlab
print("value", hmlab.VALUE, hmlab.__file__)
print("path", os.environ["PYTHONPATH"])
try:
    open("/deps/x", "w")
except OSError:
    print("deps read-only")
try:
    socket.create_connection(("127.0.0.1", 1), timeout=2)
except OSError as error:
    print("no network:", type(error).__name__)
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabIndex]:
    lab = LabIndex(tmp_path_factory.mktemp("index"))
    lab.add_wheel("hmlabdep", "1.0", "WORD = 'forty-two'\n")
    lab.add_wheel("hmlab", "1.0", "from hmlabdep import WORD\nVALUE = WORD\n", ("hmlabdep>=1",))
    with served(lab):
        yield lab


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    client = require_docker_images(PYTHON)
    yield client
    client.close()


@pytest.fixture
def cache(tmp_path: Path, index: LabIndex) -> Requirements:
    return Requirements(tmp_path / "cache", index.url)


@pytest.fixture
def executor(
    docker_client: docker.DockerClient, tmp_path: Path, cache: Requirements
) -> Iterator[DockerExecutor]:
    node_id = f"test-{secrets.token_hex(4)}"
    executor = DockerExecutor(tmp_path / "tasks", node_id, docker_client, 64, cache)
    try:
        yield executor
        left = docker_client.containers.list(
            all=True, filters={"label": f"hivemind.node={node_id}"}
        )
        assert left == [], "a container was left behind"
    finally:
        executor.remove_leftovers()


def task(requirements: str, **files: str) -> dict[str, str]:
    """The files of a bundle with this requirements.txt (``run`` makes the task of them)."""
    return {"main.py": MAIN, "requirements.txt": requirements, **files}


def run(executor: DockerExecutor, files: dict[str, str]) -> tuple[Outcome, dict[str, str]]:
    bundles = executor.work_root.parent / "bundles"
    the_task = a_python_bundle_task(
        PYTHON, files, bundles, memory_bytes=128 * MIB, timeout_seconds=120
    )
    chunks: list[tuple[str, bytes]] = []
    outcome = executor.run(
        the_task, lambda name, data: chunks.append((name, data)), threading.Event()
    )
    streams: dict[str, str] = {}
    for name, data in chunks:
        streams[name] = streams.get(name, "") + data.decode() + ("\n" if name == "system" else "")
    return outcome, streams


def entries(cache: Requirements) -> list[str]:
    return sorted(entry.name for entry in cache.root.iterdir()) if cache.root.is_dir() else []


def test_installs_without_network_then_hits_the_cache(
    executor: DockerExecutor, cache: Requirements, index: LabIndex
) -> None:
    outcome, streams = run(executor, task("hmlab==1.0  # the lab package\n"))
    assert outcome.status == "succeeded", (outcome, streams)
    assert "value forty-two /deps/hmlab/__init__.py" in streams["stdout"]
    assert "path /work:/deps" in streams["stdout"]
    assert "deps read-only" in streams["stdout"]
    assert "no network:" in streams["stdout"]
    assert "downloading wheels for 1 requirement " in streams["system"]
    assert "installing in hivemind/python:3.11 with no network" in streams["system"]
    assert "Successfully installed hmlab-1.0 hmlabdep-1.0" in streams["system"]
    assert index.wheel_downloads() == 2
    assert len(entries(cache)) == 1

    asked_before = len(index.requested)
    outcome, streams = run(executor, task("hmlab==1.0\n"))
    assert outcome.status == "succeeded", (outcome, streams)
    assert "value forty-two" in streams["stdout"]
    assert "1 requirement from the cache" in streams["system"]
    assert "downloading" not in streams["system"]
    assert len(index.requested) == asked_before, "the index was asked again"


def test_an_unsatisfiable_requirement_fails_cleanly(
    executor: DockerExecutor, cache: Requirements
) -> None:
    outcome, streams = run(executor, task("hmlab==9.9\n"))
    assert outcome.status == "failed"
    assert outcome.error.startswith("requirements.txt cannot be met: "), outcome.error
    assert "hmlab==9.9" in outcome.error and "\n" not in outcome.error
    assert outcome.exit_code == -1 and outcome.usage.wall_seconds == 0
    assert outcome.usage.cpu_seconds == 0
    assert "stdout" not in streams, "the task ran"
    assert entries(cache) == [], "a cache entry was left behind"


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        ("-r /etc/shadow\n", "line 1: options are not supported here"),
        ("hmlab==1.0\n--index-url http://elsewhere/\n", "line 2: options are not supported"),
        ("hmlab @ file:///etc/passwd\n", "line 1: a URL or path cannot be installed"),
        ("hmlab ((\n", "requirements.txt line 1:"),
    ],
)
def test_options_and_paths_are_refused_before_anything_runs(
    executor: DockerExecutor, cache: Requirements, index: LabIndex, requirements: str, expected: str
) -> None:
    asked_before = len(index.requested)
    outcome, _ = run(executor, task(requirements))
    assert outcome.status == "failed"
    assert expected in outcome.error, outcome.error
    assert outcome.usage.wall_seconds == 0
    assert entries(cache) == [] and len(index.requested) == asked_before


def test_the_cache_evicts_the_least_recently_used_install(
    docker_client: docker.DockerClient, tmp_path: Path, index: LabIndex
) -> None:
    small = Requirements(tmp_path / "small", index.url, max_bytes=1)
    executor = DockerExecutor(tmp_path / "tasks", "test-lru", docker_client, 64, small)
    try:
        first, _ = run(executor, task("hmlab==1.0\n"))
        assert first.status == "succeeded"
        (kept,) = entries(small)  # held while its task ran, so not evicted then
        second, _ = run(executor, task("hmlabdep==1.0\n", **{"main.py": "import hmlabdep"}))
        assert second.status == "succeeded", second
        assert kept not in entries(small) and len(entries(small)) == 1
    finally:
        executor.remove_leftovers()


def test_a_bundle_without_requirements_mounts_nothing(
    executor: DockerExecutor, cache: Requirements
) -> None:
    script: dict[str, Any] = {"main.py": "import os; print(os.path.exists('/deps'))"}
    outcome, streams = run(executor, task("", **script))
    assert outcome.status == "succeeded", (outcome, streams)
    assert streams["stdout"] == "False\n"
    assert "system" not in streams and entries(cache) == []
