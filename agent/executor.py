"""Run one task in a hardened Docker container and report its outcome, output and usage.

Every container gets the platform defaults (DESIGN.md section 4): no network unless asked, a
read-only root with a small tmpfs ``/tmp``, no capabilities, no-new-privileges, user nobody, a
pids limit, the CPU and memory that were paid for (no swap), a hard timeout, and removal
afterwards. The input bundle is mounted read-only at ``/work``; whatever the task writes to
``/out`` comes back as a zip.

Output is read from an attach socket opened *before* the container starts, so even a container
that exits at once loses nothing, and stdout and stderr stay apart (Docker's frame headers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig
from docker.utils.socket import frames_iter_no_tty

from hivemind_cluster.core.console import one_line
from hivemind_cluster.core.errors import InvalidInput, SystemFailure
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.bundles import pack_directory, unpack_bundle

log = logging.getLogger(__name__)

NOBODY = 65534
POLL_SECONDS = 0.25
# After a kill, how long the output stream and the exit status may take to arrive.
SETTLE_SECONDS = 10.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
LABEL_NODE = "hivemind.node"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

OnOutput = Callable[[str, bytes], None]
UsageReader = Callable[[], tuple[float, int]]


@dataclass(frozen=True)
class TaskRun:
    """What the pool assigned to this worker."""

    task_id: str
    attempt: int
    image: str
    command: list[str]  # empty: the image's default command
    env: dict[str, str]
    cpu_millis: int  # 1000 = one core
    memory_bytes: int  # also the memory+swap limit: no swap
    gpus: int
    timeout_seconds: int
    network: bool  # False: network_mode "none"
    input_bundle: bytes  # a zip, or b"" for none
    # The GPUs the worker set aside for this task (indices or UUIDs); empty: any `gpus`.
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_memory_bytes: int
    wall_seconds: float
    gpu_seconds: float


NO_USAGE = Usage(0.0, 0, 0.0, 0.0)


@dataclass(frozen=True)
class Outcome:
    status: str  # "succeeded" | "failed" | "timed_out" | "cancelled"
    exit_code: int  # -1 when the container never ran
    error: str  # "" or one line
    usage: Usage
    output_bundle: bytes  # zip of /out, b"" if nothing was written


def never_ran(error: str, status: str = "failed") -> Outcome:
    return Outcome(status, -1, error, NO_USAGE, b"")


# --- usage -----------------------------------------------------------------------------------


def read_number(path: Path) -> int:
    return int(path.read_text().split()[0])


def cgroup_v1_reader(container_id: str) -> UsageReader | None:
    cpu = CGROUP_ROOT / "cpuacct" / "docker" / container_id / "cpuacct.usage"
    memory = CGROUP_ROOT / "memory" / "docker" / container_id / "memory.max_usage_in_bytes"
    if not (cpu.exists() and memory.exists()):
        return None
    return lambda: (read_number(cpu) / 1e9, read_number(memory))


def cgroup_v2_reader(container_id: str) -> UsageReader | None:
    for group in (
        CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope",  # systemd driver
        CGROUP_ROOT / "docker" / container_id,  # cgroupfs driver
    ):
        if (group / "cpu.stat").exists():
            peak = group / "memory.peak"  # kernel 5.19+; otherwise the highest current we saw
            memory = peak if peak.exists() else group / "memory.current"
            return lambda: (cpu_stat_seconds(group / "cpu.stat"), read_number(memory))
    return None


def cpu_stat_seconds(path: Path) -> float:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"no usage_usec in {path}")


def docker_stats_reader(container: Container) -> UsageReader:
    def read() -> tuple[float, int]:
        stats = container.stats(stream=False, one_shot=True)
        if not isinstance(stats, dict):
            raise ValueError("docker stats did not return a document")
        memory = stats.get("memory_stats", {})
        cpu_ns = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0)
        return cpu_ns / 1e9, int(memory.get("max_usage") or memory.get("usage") or 0)

    return read


class UsageMeter:
    """The running container's CPU time and peak memory, sampled; the last values are kept."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.reader: UsageReader | None = None
        self.cpu_seconds = 0.0
        self.peak_memory_bytes = 0

    def sample(self) -> None:
        if self.reader is None:
            container_id = str(self.container.id)
            self.reader = (
                cgroup_v1_reader(container_id)
                or cgroup_v2_reader(container_id)
                or docker_stats_reader(self.container)
            )
        try:
            cpu_seconds, memory_bytes = self.reader()
        except (OSError, ValueError, docker.errors.DockerException):
            return  # the container is gone: keep what we have
        self.cpu_seconds = max(self.cpu_seconds, cpu_seconds)
        self.peak_memory_bytes = max(self.peak_memory_bytes, memory_bytes)


# --- output ----------------------------------------------------------------------------------

STREAM_NAMES = {1: "stdout", 2: "stderr"}
QUEUED_CHUNKS = 1024


class OutputPump:
    """Reads the attach socket on a thread and queues (stream name, chunk) for the caller.

    A None in the queue marks the end of the stream (every process closed its stdout/stderr).
    The queue is bounded: a task that writes faster than ``on_output`` consumes is slowed
    down (its writes block) instead of filling the agent's memory.
    """

    def __init__(self, client: docker.DockerClient, container: Container) -> None:
        self.socket = client.api.attach_socket(
            str(container.id), params={"stdout": 1, "stderr": 1, "stream": 1}
        )
        self.raw: socket.socket = getattr(self.socket, "_sock", self.socket)
        self.raw.settimeout(None)  # a task may be silent for longer than the API timeout
        self.chunks: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self.ended = False
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.pump, name="task-output", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def pump(self) -> None:
        try:
            for stream_id, data in frames_iter_no_tty(self.socket):
                if isinstance(data, bytes) and data:
                    self.offer((STREAM_NAMES.get(int(stream_id), "stdout"), data))
        except (OSError, ValueError) as error:
            log.debug("output stream ended: %s", error)
        finally:
            self.offer(None)

    def offer(self, item: tuple[str, bytes] | None) -> None:
        """Queue an item, waiting for room, unless the pump is closed meanwhile."""
        while not self.closed.is_set():
            with contextlib.suppress(queue.Full):
                self.chunks.put(item, timeout=POLL_SECONDS)
                return

    def deliver(self, on_output: OnOutput, timeout: float) -> None:
        """Deliver what arrives within ``timeout`` seconds (less if the stream ends)."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            try:
                chunk = self.chunks.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return
            if chunk is None:
                self.ended = True
            else:
                on_output(*chunk)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.socket.close()
        self.thread.join(timeout=1)


# --- the executor ----------------------------------------------------------------------------


def container_options(task: TaskRun, node_id: str, pids_limit: int) -> dict[str, Any]:
    """The create() arguments for a task (apart from mounts): the platform's hardening."""
    options: dict[str, Any] = {
        "name": f"hm-{task.task_id}-{task.attempt}-{secrets.token_hex(3)}",
        "labels": {
            LABEL_NODE: node_id,
            "hivemind.task": task.task_id,
            "hivemind.attempt": str(task.attempt),
        },
        "environment": dict(task.env),
        "working_dir": "/work",
        "user": f"{NOBODY}:{NOBODY}",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,size=64m,mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids_limit,
        "network_mode": "bridge" if task.network else "none",
        # Output is read from the attach stream; nothing needs to be kept on the host's disk.
        "log_config": LogConfig(type="none"),
    }
    if task.command:
        options["command"] = list(task.command)
    if task.cpu_millis > 0:
        options["nano_cpus"] = task.cpu_millis * 1_000_000
    if task.memory_bytes > 0:
        options["mem_limit"] = task.memory_bytes
        options["memswap_limit"] = task.memory_bytes
    if task.gpu_ids:
        options["device_requests"] = [
            DeviceRequest(device_ids=list(task.gpu_ids), capabilities=[["gpu"]])
        ]
    elif task.gpus > 0:
        options["device_requests"] = [DeviceRequest(count=task.gpus, capabilities=[["gpu"]])]
    return options


class DockerExecutor:
    """Runs tasks in Docker containers labelled with this node's id."""

    def __init__(
        self,
        work_root: Path,
        node_id: str,
        client: docker.DockerClient | None = None,
        pids_limit: int = 256,
    ) -> None:
        self.work_root = work_root
        self.node_id = node_id
        self.client = client or docker.from_env()
        self.pids_limit = pids_limit

    @staticmethod
    def probe() -> tuple[bool, str]:
        """(True, server version) when Docker answers, else (False, why not)."""
        try:
            client = docker.from_env(timeout=5)
        except docker.errors.DockerException as error:
            return False, one_line(str(error))
        try:
            return True, str(client.version().get("Version", "unknown"))
        except (docker.errors.DockerException, OSError) as error:
            return False, one_line(str(error))
        finally:
            client.close()

    def remove_leftovers(self) -> int:
        """Remove this node's containers and task directories left by a crashed agent.

        Call it when the agent starts, before any ``run``: it removes every directory under
        ``work_root``. Returns the number of containers removed.
        """
        leftovers = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_NODE}={self.node_id}"}
        )
        for container in leftovers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        if self.work_root.is_dir():
            for entry in self.work_root.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
        return len(leftovers)

    def run(self, task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        """Run the task to completion (blocking; call from a worker thread).

        ``on_output`` is called on this thread as output arrives. Setting ``cancel`` from
        another thread kills the container within about POLL_SECONDS. Whatever the task does
        becomes an Outcome; only a failure of Docker itself (daemon gone, connection lost)
        raises SystemFailure, after the container and the task directory are removed (as far as
        the daemon allows), so that the pool can retry the task elsewhere.
        """
        if not SAFE_ID.match(task.task_id):
            return never_ran(f"task id {task.task_id!r} is not a safe name")
        task_dir = self.work_root / f"{task.task_id}-{task.attempt}"
        try:
            return self.run_in(task_dir, task, on_output, cancel)
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)

    def run_in(
        self, task_dir: Path, task: TaskRun, on_output: OnOutput, cancel: threading.Event
    ) -> Outcome:
        try:
            work, out = prepare_task_directory(task_dir, task.input_bundle)
        except InvalidInput as error:
            return never_ran(f"bad input bundle: {error.message}")
        try:
            self.client.images.get(task.image)
        except docker.errors.ImageNotFound:
            return never_ran(
                f"image {task.image!r} is not available on this worker (build it with make images)"
            )
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise SystemFailure(f"docker is not available: {one_line(str(error))}") from error
        if cancel.is_set():
            return never_ran("cancelled", status="cancelled")
        try:
            with self.created_container(task, work, out) as container:
                return self.supervise(container, task, out, on_output, cancel)
        except docker.errors.APIError as error:
            return never_ran(f"docker refused the task: {one_line(str(error.explanation))}")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise SystemFailure(
                f"docker failed while running the task: {one_line(str(error))}"
            ) from error

    @contextlib.contextmanager
    def created_container(self, task: TaskRun, work: Path, out: Path) -> Iterator[Container]:
        container = self.client.containers.create(
            task.image,
            volumes={str(work): {"bind": "/work", "mode": "ro"}, str(out): {"bind": "/out"}},
            **container_options(task, self.node_id, self.pids_limit),
        )
        try:
            yield container
        finally:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as error:
                log.warning("could not remove container %s: %s", container.name, error)

    def supervise(
        self,
        container: Container,
        task: TaskRun,
        out: Path,
        on_output: OnOutput,
        cancel: threading.Event,
    ) -> Outcome:
        pump = OutputPump(self.client, container)
        meter = UsageMeter(container)
        try:
            container.start()
            started = time.monotonic()
            pump.start()
            stopped_because, exit_code = watch(
                container, task, pump, meter, on_output, cancel, started
            )
            wall_seconds = time.monotonic() - started
            pump.deliver(on_output, SETTLE_SECONDS)  # the rest, after a kill
        finally:
            pump.close()
        container.reload()
        out_of_memory = bool(container.attrs.get("State", {}).get("OOMKilled"))
        status, error = judge(task, stopped_because, exit_code, out_of_memory)
        usage = Usage(
            cpu_seconds=round(meter.cpu_seconds, 6),
            # An OOM kill means the limit was reached, even if it happened between two samples.
            peak_memory_bytes=max(
                meter.peak_memory_bytes, task.memory_bytes if out_of_memory else 0
            ),
            wall_seconds=round(wall_seconds, 6),
            gpu_seconds=round(wall_seconds * task.gpus, 6),
        )
        try:
            output = pack_directory(out)
        except InvalidInput as too_big:
            output = b""
            if status == "succeeded":
                status, error = "failed", too_big.message
        return Outcome(status, exit_code, error, usage, output)


def prepare_task_directory(task_dir: Path, bundle: bytes) -> tuple[Path, Path]:
    """Fresh ``work`` (the unpacked bundle) and ``out`` (writable by the task) directories."""
    shutil.rmtree(task_dir, ignore_errors=True)
    work, out = task_dir / "work", task_dir / "out"
    for directory in (task_dir, work, out):
        directory.mkdir(parents=True)
        directory.chmod(0o755)
    os.chown(out, NOBODY, NOBODY)
    if bundle:
        unpack_bundle(bundle, work)
    return work, out


def watch(
    container: Container,
    task: TaskRun,
    pump: OutputPump,
    meter: UsageMeter,
    on_output: OnOutput,
    cancel: threading.Event,
    started: float,
) -> tuple[str, int]:
    """Forward output and sample usage until the container exits; kill on timeout or cancel.

    Returns ("", exit code) when the task ended by itself, else ("timed_out" or "cancelled",
    exit code after the kill).
    """
    deadline = started + task.timeout_seconds
    while True:
        now = time.monotonic()
        if cancel.is_set() or now >= deadline:
            kill(container)
            reason = "cancelled" if cancel.is_set() else "timed_out"
            return reason, wait_for_exit(container, SETTLE_SECONDS)
        meter.sample()
        budget = min(POLL_SECONDS, deadline - now)
        if not pump.ended:
            pump.deliver(on_output, budget)
            continue
        with contextlib.suppress(requests.exceptions.RequestException):
            # The output has ended, so the process is normally gone already.
            return "", wait_for_exit(container, budget)


def kill(container: Container) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.kill()


def wait_for_exit(container: Container, timeout: float) -> int:
    result = container.wait(timeout=max(timeout, 0.01))
    return int(result["StatusCode"])


def judge(
    task: TaskRun, stopped_because: str, exit_code: int, out_of_memory: bool
) -> tuple[str, str]:
    """(status, error) for a container that ran."""
    if stopped_because == "cancelled":
        return "cancelled", "cancelled"
    if stopped_because == "timed_out":
        return "timed_out", f"timed out after {task.timeout_seconds}s"
    if out_of_memory:
        return "failed", f"killed: out of memory (limit {format_bytes(task.memory_bytes)})"
    if exit_code != 0:
        return "failed", f"exited with status {exit_code}"
    return "succeeded", ""
