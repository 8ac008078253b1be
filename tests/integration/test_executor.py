"""The Docker executor against the real daemon and the images from ``make images``.

Each test runs real containers; hostile tasks (memory hog, fork bomb, network probe, writes to
the root filesystem) check that the hardening holds, and every test checks that no container
with its node id is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import secrets
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from hivemind_cluster.agent import workcopy
from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import Outcome, TaskRun
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.blobs import hash_file
from hivemind_cluster.model.bundles import RESULT_RULES, check_bundle, default_command, pack_files
from tests.support.prerequisites import require_docker_images
from tests.support.tasks import a_task, bundle_file

pytestmark = pytest.mark.privileged

BUSYBOX = "hivemind/busybox:latest"
PYTHON = "hivemind/python:3.11"


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    client = require_docker_images(BUSYBOX, PYTHON)
    yield client
    client.close()


def labelled(client: docker.DockerClient, node_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"hivemind.node={node_id}"})


@pytest.fixture
def executor(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[DockerExecutor]:
    node_id = f"test-{secrets.token_hex(4)}"
    executor = DockerExecutor(tmp_path / "tasks", node_id, client=docker_client, pids_limit=64)
    try:
        yield executor
        assert labelled(docker_client, node_id) == [], "a task container was left behind"
        assert list((tmp_path / "tasks").glob("*")) == [], "a task directory was left behind"
        assert list(executor.results_root.glob("*")) == [], "a result zip was left behind"
    finally:
        executor.remove_leftovers()


def task(command: list[str], **changes: Any) -> TaskRun:
    return a_task(changes.pop("image", BUSYBOX), command, **changes)


def sh(script: str, **changes: Any) -> TaskRun:
    return task(["sh", "-c", script], **changes)


@dataclass
class Run:
    outcome: Outcome
    seconds: float
    chunks: list[tuple[str, bytes]] = field(default_factory=list)
    result: dict[str, bytes] = field(default_factory=dict)

    def text(self, stream: str) -> str:
        return b"".join(data for name, data in self.chunks if name == stream).decode()

    def files(self) -> dict[str, bytes]:
        return self.result


def result_of(outcome: Outcome) -> dict[str, bytes]:
    """The members of the outcome's result zip, which is then deleted (as the worker does
    once the pool has it), after checking that its digest and size are the file's."""
    if outcome.output is None:
        return {}
    path = outcome.output.path
    try:
        assert (hash_file(path).digest, path.stat().st_size) == (
            outcome.output.digest,
            outcome.output.size,
        )
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    finally:
        path.unlink()


def run(executor: DockerExecutor, the_task: TaskRun, cancel_after: float | None = None) -> Run:
    chunks: list[tuple[str, bytes]] = []
    cancel = threading.Event()
    if cancel_after is not None:
        threading.Timer(cancel_after, cancel.set).start()
    started = time.monotonic()
    outcome = executor.run(the_task, lambda name, data: chunks.append((name, data)), cancel)
    return Run(outcome, time.monotonic() - started, chunks, result_of(outcome))


def test_output_streams_and_out_directory(executor: DockerExecutor) -> None:
    result = run(executor, sh("echo hi; echo oops >&2; echo 42 > /out/answer.txt; echo bye"))
    assert result.outcome.status == "succeeded", result.outcome
    assert (result.outcome.exit_code, result.outcome.error) == (0, "")
    assert result.text("stdout") == "hi\nbye\n"
    assert result.text("stderr") == "oops\n"
    assert result.files() == {"answer.txt": b"42\n"}
    assert result.outcome.usage.wall_seconds > 0


def test_fast_exit_loses_no_output(executor: DockerExecutor) -> None:
    for _ in range(5):
        result = run(executor, task(["echo", "hi"]))
        assert (result.outcome.status, result.text("stdout")) == ("succeeded", "hi\n")
        assert result.outcome.output is None


def test_a_flood_of_output_arrives_complete_and_in_order(executor: DockerExecutor) -> None:
    result = run(executor, sh("seq 1 200000; echo done >&2"))
    assert result.outcome.status == "succeeded"
    assert result.text("stdout") == "".join(f"{n}\n" for n in range(1, 200001))
    assert result.text("stderr") == "done\n"


def test_main_py_convention_in_the_python_image(executor: DockerExecutor, tmp_path: Path) -> None:
    files = {
        "main.py": "import sys\nprint('hello from', sys.argv[0], open('/work/data.txt').read())",
        "data.txt": "the bundle",
    }
    bundle = bundle_file(files, tmp_path)
    command = default_command(check_bundle(bundle))
    assert command == ["python", "/work/main.py"]
    result = run(executor, task(command, image=PYTHON, bundle=bundle))
    assert result.outcome.status == "succeeded", (result.outcome, result.chunks)
    assert result.text("stdout") == "hello from /work/main.py the bundle\n"


def test_container_gets_every_hardening_option(
    executor: DockerExecutor, docker_client: docker.DockerClient
) -> None:
    seen: dict[str, Any] = {}

    def inspect(name: str, data: bytes) -> None:
        if not seen:
            (container,) = labelled(docker_client, executor.node_id)
            seen.update(container.attrs, name=container.name)

    the_task = sh("echo ready; sleep 1", cpu_millis=500, memory_bytes=96 * MIB, attempt=3)
    outcome = executor.run(the_task, inspect, threading.Event())
    assert outcome.status == "succeeded"
    host, config = seen["HostConfig"], seen["Config"]
    assert seen["name"].startswith(f"hm-{the_task.task_id}-3-")
    assert config["Labels"] == {
        "hivemind.node": executor.node_id,
        "hivemind.task": the_task.task_id,
        "hivemind.attempt": "3",
    }
    assert (config["User"], config["WorkingDir"]) == ("65534:65534", "/work")
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert not host.get("Tmpfs")  # /tmp is on the task's own disk (test_workdir.py)
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 64
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == host["MemorySwap"] == 96 * MIB
    mounts = {mount["Destination"]: mount for mount in seen["Mounts"]}
    assert [mounts[path]["RW"] for path in ("/work", "/out", "/tmp")] == [True, True, True]


def test_runs_as_nobody_without_privileges_on_a_read_only_root(executor: DockerExecutor) -> None:
    script = (
        "id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status;"
        "touch /x || echo root-read-only;"
        "touch /work/x && echo work-writable;"
        "echo scratch > /tmp/t && cat /tmp/t"
    )
    result = run(executor, sh(script))
    assert result.outcome.status == "succeeded", result.outcome
    assert result.text("stdout").split() == [
        "65534",
        "65534",
        "CapEff:",
        "0000000000000000",
        "NoNewPrivs:",
        "1",
        "root-read-only",
        "work-writable",
        "scratch",
    ]
    assert "Read-only file system" in result.text("stderr")


@pytest.fixture
def host_listener(docker_client: docker.DockerClient) -> Iterator[tuple[str, int]]:
    """A TCP listener on this host, at the address Docker's default bridge routes to it."""
    bridge = docker_client.networks.get("bridge")
    config = bridge.attrs["IPAM"]["Config"][0]
    # Docker leaves Gateway out of the default bridge's IPAM when it picked it itself: then
    # it is the subnet's first address.
    gateway = config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    with socket.create_server((gateway, 0)) as server:
        server.settimeout(0.2)
        stop = threading.Event()

        def accept_and_close() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    server.accept()[0].close()

        thread = threading.Thread(target=accept_and_close, daemon=True)
        thread.start()
        try:
            yield gateway, server.getsockname()[1]
        finally:
            stop.set()
            thread.join()


def test_no_network_unless_asked(executor: DockerExecutor, host_listener: tuple[str, int]) -> None:
    # busybox nc: reaches the listener only with a network (its wget segfaults in this image).
    address, port = host_listener
    probe = (
        f"ls /sys/class/net; if nc -w 3 {address} {port} -e true 2>/dev/null;"
        " then echo reached; else echo unreachable; fi"
    )
    isolated = run(executor, sh(probe))
    assert isolated.text("stdout").split() == ["lo", "unreachable"]
    connected = run(executor, sh(probe, network=True))
    words = connected.text("stdout").split()
    assert "eth0" in words
    assert words[-1] == "reached", connected.chunks


def test_memory_hog_is_killed(executor: DockerExecutor) -> None:
    hog = ["python", "-c", "data = b'x' * (200 * 1024 * 1024); print(len(data))"]
    result = run(executor, task(hog, image=PYTHON, memory_bytes=64 * MIB))
    assert result.outcome.status == "failed"
    assert result.outcome.error == "killed: out of memory (limit 64 MiB)"
    assert result.outcome.exit_code == 137
    assert result.text("stdout") == ""
    assert result.outcome.usage.peak_memory_bytes == 64 * MIB


def test_fork_bomb_hits_the_pids_limit(executor: DockerExecutor) -> None:
    bomb = "for i in $(seq 1 300); do sleep 120 & done; echo spawned; exit 3"
    result = run(executor, sh(bomb))
    assert result.seconds < 60  # the sleeps died with the container, long before 120 s
    # busybox sh gives up on the first fork that fails: "sh: can't fork: Resource temporarily
    # unavailable", exit status 2, and the sleeps it did start die with the container.
    assert "can't fork" in result.text("stderr"), result.chunks
    assert "spawned" not in result.text("stdout")
    assert result.outcome.status == "failed"
    assert result.outcome.error == f"exited with status {result.outcome.exit_code}"


def test_usage_is_measured_within_the_cpu_limit(executor: DockerExecutor) -> None:
    spin = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"
    result = run(executor, sh(spin, cpu_millis=500))
    usage = result.outcome.usage
    assert result.outcome.status == "succeeded"
    assert usage.cpu_seconds > 0.2
    assert usage.cpu_seconds <= usage.wall_seconds * 0.5 + 0.15  # half a core at most
    assert usage.peak_memory_bytes > 0
    assert usage.gpu_seconds == 0


def test_hard_timeout(executor: DockerExecutor) -> None:
    result = run(executor, sh("echo start; sleep 120", timeout_seconds=2))
    assert result.outcome.status == "timed_out"
    assert result.outcome.error == "timed out after 2s"
    assert result.text("stdout") == "start\n"
    assert 2 <= result.seconds < 60  # stopped at its timeout, not when the sleep ended


def test_task_that_closes_its_output_is_still_waited_for(executor: DockerExecutor) -> None:
    quiet = run(executor, sh("echo bye; exec >&- 2>&-; sleep 2; touch /out/done"))
    assert quiet.outcome.status == "succeeded", quiet.outcome
    assert (quiet.text("stdout"), quiet.files()) == ("bye\n", {"done": b""})
    assert quiet.seconds >= 2
    stuck = run(executor, sh("exec >&- 2>&-; sleep 120", timeout_seconds=1))
    assert stuck.outcome.status == "timed_out"
    assert stuck.seconds < 60


def test_cancel(executor: DockerExecutor) -> None:
    result = run(executor, sh("sleep 120"), cancel_after=1)
    assert (result.outcome.status, result.outcome.error) == ("cancelled", "cancelled")
    assert result.seconds < 60


def test_output_over_the_cap_fails_the_task(
    executor: DockerExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real caps are GiBs: the same rules, with a cap a test can pass cheaply.
    small = dataclasses.replace(RESULT_RULES, max_zip_bytes=16 * MIB)
    monkeypatch.setattr(workcopy, "pack_files", functools.partial(pack_files, rules=small))
    result = run(executor, sh("head -c 17825792 /dev/urandom > /out/big"))
    assert result.outcome.status == "failed"
    assert result.outcome.error == "task output is larger than 16 MiB"
    assert result.outcome.output is None


def test_missing_image(executor: DockerExecutor) -> None:
    result = run(executor, task(["true"], image="hivemind/nope:1"))
    assert result.outcome.status == "failed"
    assert result.outcome.exit_code == -1
    assert result.outcome.error == (
        "image 'hivemind/nope:1' is not available on this worker (build it with make images)"
    )


def test_zip_slip_is_refused_before_any_container(
    executor: DockerExecutor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    created: list[Any] = []
    monkeypatch.setattr(executor.client.containers, "create", lambda *a, **k: created.append(a))
    result = run(executor, task(["true"], bundle=bundle_file({"../escape.txt": "x"}, tmp_path)))
    assert result.outcome.status == "failed"
    assert result.outcome.exit_code == -1
    assert (
        result.outcome.error == "bad input bundle: bundle entry '../escape.txt' escapes the bundle"
    )
    assert created == []


def test_remove_leftovers(executor: DockerExecutor, docker_client: docker.DockerClient) -> None:
    docker_client.containers.create(
        BUSYBOX, ["sleep", "30"], labels={"hivemind.node": executor.node_id}
    ).start()
    assert executor.remove_leftovers() == 1
    assert labelled(docker_client, executor.node_id) == []
