"""Run one task in a hardened Docker container and report its outcome, output and usage.

``DockerExecutor.run`` stages the task's directories and creates its container (both in
agent/sandbox.py), starts it, forwards its output as it arrives (agent/output.py) while
sampling its usage (agent/usage.py; over time, into the attempt's series of
agent/usagesamples.py), times each phase for the agent's metrics (agent/metrics.py), kills
it on timeout, once its price cap is used up or on cancel, and removes it afterwards;
whatever the task wrote to ``/out`` or changed in its working copy comes back as a zip
(agent/workcopy.py) packed to a file in ``results_root`` (the worker sends it, then deletes
it), and filling its own disk (agent/taskdisk.py) fails it, as does a bundle or ``dir``
input that does not fit on it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import requests
from docker.models.containers import Container

from hivemind_cluster.agent.metrics import (
    CONTAINER_START,
    DEPENDENCY_INSTALL,
    IMAGE_PULL,
    RUN,
    observe_phase,
    timed,
)
from hivemind_cluster.agent.output import POLL_SECONDS, OutputPump
from hivemind_cluster.agent.pulls import ImageUnavailable, image_digest
from hivemind_cluster.agent.requirements import NO_DEPS, Deps, Requirements, RequirementsUnmet
from hivemind_cluster.agent.results import RESULTS_DIR, result_path
from hivemind_cluster.agent.sandbox import (
    LABEL_NODE,
    container_options,
    input_mounts,
    prepare_task_directory,
    task_mounts,
)
from hivemind_cluster.agent.taskdisk import (
    DiskFullWatch,
    disk_is_full,
    disk_limit_error,
    limit_shown,
    task_disk,
    unmount_leftovers,
)
from hivemind_cluster.agent.taskrun import (
    OnOutput,
    Outcome,
    ResultFile,
    TaskRun,
    Usage,
    never_ran,
    system_notes,
)
from hivemind_cluster.agent.usage import UsageMeter
from hivemind_cluster.agent.workcopy import Snapshot, pack_result, snapshot
from hivemind_cluster.core.console import one_line
from hivemind_cluster.core.errors import InvalidInput, SystemFailure
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.blobs import DIR, hash_file
from hivemind_cluster.model.bundles import unpacked_size
from hivemind_cluster.model.pricing import PRICE_CAP_REACHED
from hivemind_cluster.model.states import TaskState

log = logging.getLogger(__name__)

# After a kill, how long the output stream and the exit status may take to arrive.
SETTLE_SECONDS = 10.0
# What stopped a container whose price cap was used up (it ends "failed", saying so).
PRICE_CAP = "price_cap"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class DockerExecutor:
    """Runs tasks in Docker containers labelled with this node's id."""

    def __init__(
        self,
        work_root: Path,
        node_id: str,
        client: docker.DockerClient | None = None,
        pids_limit: int = 256,
        requirements: Requirements | None = None,
        results_root: Path | None = None,
    ) -> None:
        self.work_root = work_root
        # Result zips, until the worker has sent them (agent/results.py).
        self.results_root = results_root or work_root.parent / RESULTS_DIR
        self.node_id = node_id
        self.client = client or docker.from_env()
        self.pids_limit = pids_limit
        # Installs of tasks' requirements.txt (agent/requirements.py), shared by all tasks.
        self.requirements = requirements or Requirements(work_root.parent / "requirements")

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
        unmount_leftovers(self.work_root)
        self.requirements.remove_leftovers()
        if self.work_root.is_dir():
            for entry in self.work_root.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
        return len(leftovers)

    def run(self, task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        """Run the task to completion (blocking; call from a worker thread).

        ``on_output`` is called on this thread as output arrives. Setting ``cancel`` from
        another thread kills the container within about POLL_SECONDS. Whatever the task does
        becomes an Outcome; only a failure of Docker itself (daemon gone, connection lost) or
        of the task's disk (too little free, mount refused) raises SystemFailure, after the
        container, the disk and the task directory are removed (as far as the daemon allows),
        so that the pool can retry the task elsewhere.
        """
        if not SAFE_ID.match(task.task_id):
            return never_ran(f"task id {task.task_id!r} is not a safe name")
        task_dir = self.work_root / f"{task.task_id}-{task.attempt}"
        try:
            with task_disk(task_dir, task.disk_bytes) as root:
                return self.run_in(root, task, on_output, cancel)
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)

    def run_in(
        self, root: Path, task: TaskRun, on_output: OnOutput, cancel: threading.Event
    ) -> Outcome:
        try:
            check_room(root, task)
            work, out = prepare_task_directory(root, task)
            before = snapshot(work)
        except InvalidInput as error:
            return never_ran(error.message)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            return never_ran(does_not_fit(task))
        try:
            with timed(IMAGE_PULL):
                digest = image_digest(self.client, task, system_notes(on_output), cancel)
        except ImageUnavailable as unavailable:
            return never_ran(unavailable.message, status=unavailable.status)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise SystemFailure(f"docker is not available: {one_line(str(error))}") from error
        if cancel.is_set():
            return never_ran("cancelled", status=TaskState.CANCELLED)
        try:
            installing = time.monotonic()
            with self.requirements.held(
                self.client, self.node_id, task, system_notes(on_output), cancel
            ) as deps:
                if deps.path is not None:  # the task has requirements
                    observe_phase(DEPENDENCY_INSTALL, time.monotonic() - installing)
                creating = time.monotonic()
                with self.created_container(task, work, out, deps) as container:
                    copy = (work, out, before)
                    outcome = self.supervise(container, task, copy, on_output, cancel, creating)
                    return replace(outcome, image_digest=digest)
        except RequirementsUnmet as unmet:
            return never_ran(unmet.message, status=unmet.status)
        except docker.errors.APIError as error:
            return never_ran(f"docker refused the task: {one_line(str(error.explanation))}")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise SystemFailure(
                f"docker failed while running the task: {one_line(str(error))}"
            ) from error

    @contextlib.contextmanager
    def created_container(
        self, task: TaskRun, work: Path, out: Path, deps: Deps = NO_DEPS
    ) -> Iterator[Container]:
        container = self.client.containers.create(
            task.image,
            volumes={**task_mounts(work, out), **deps.mounts()},
            mounts=input_mounts(work.parent, task.inputs),
            **container_options(
                replace(task, env=deps.environment(task.env)), self.node_id, self.pids_limit
            ),
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
        copy: tuple[Path, Path, Snapshot],
        on_output: OnOutput,
        cancel: threading.Event,
        creating: float,
    ) -> Outcome:
        """Start the created container, follow it to its end and judge it; ``creating``:
        when its creation began (monotonic), for the container_start phase."""
        work, out, before = copy
        on_output = said_full = DiskFullWatch(on_output)
        pump = OutputPump(self.client, container)
        meter = UsageMeter(container, task.usage)
        try:
            container.start()
            started = time.monotonic()
            observe_phase(CONTAINER_START, started - creating)
            pump.start()
            stopped_because, exit_code = watch(
                container, task, pump, meter, on_output, cancel, started
            )
            wall_seconds = time.monotonic() - started
            observe_phase(RUN, wall_seconds)
            task.usage.finish()
            pump.deliver(on_output, SETTLE_SECONDS)  # the rest, after a kill
        finally:
            pump.close()
        container.reload()
        out_of_memory = bool(container.attrs.get("State", {}).get("OOMKilled"))
        disk_full = disk_is_full(work.parent) or (exit_code != 0 and said_full.seen)
        status, error = judge(task, stopped_because, exit_code, out_of_memory, disk_full)
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
            output = self.packed_result(task, out, work, before)
        except InvalidInput as too_big:
            output = None
            if status == TaskState.SUCCEEDED:
                status, error = TaskState.FAILED, too_big.message
        return Outcome(status, exit_code, error, usage, output)

    def packed_result(
        self, task: TaskRun, out: Path, work: Path, before: Snapshot
    ) -> ResultFile | None:
        """The result zip in ``results_root`` and its digest; None when nothing was written."""
        self.results_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        dest = result_path(self.results_root, task.task_id, task.attempt)
        dest.unlink(missing_ok=True)  # a run of the same attempt before an agent restart
        size = pack_result(out, work, before, dest)
        if not size:
            return None
        return ResultFile(dest, hash_file(dest).digest, size)


def check_room(root: Path, task: TaskRun) -> None:
    """Refuse, before writing anything, a bundle and ``dir`` inputs whose files alone need
    more than the task's disk has (OSError ENOSPC, as a full disk would raise)."""
    zips = [("bad input bundle", task.bundle)] if task.bundle is not None else []
    zips += [(f"input {i.name}", i.path) for i in task.inputs if i.kind == DIR]
    needed = 0
    for what, path in zips:
        try:
            needed += unpacked_size(path)
        except InvalidInput as error:
            raise InvalidInput(f"{what}: {error.message}") from None
    if needed > shutil.disk_usage(root).free:
        raise OSError(errno.ENOSPC, "the bundle and inputs do not fit")


def does_not_fit(task: TaskRun) -> str:
    what = "the bundle and inputs do" if task.inputs else "bad input bundle: it does"
    return f"{what} not fit in the disk limit ({limit_shown(task.disk_bytes)})"


def watch(
    container: Container,
    task: TaskRun,
    pump: OutputPump,
    meter: UsageMeter,
    on_output: OnOutput,
    cancel: threading.Event,
    started: float,
) -> tuple[str, int]:
    """Forward output and sample usage until the container exits; kill on timeout, when its
    price cap is used up, or on cancel.

    Returns ("", exit code) when the task ended by itself, else ("timed_out", PRICE_CAP or
    "cancelled", exit code after the kill).
    """
    limit, limited_by = run_limit(task)
    deadline = started + limit
    while True:
        now = time.monotonic()
        if cancel.is_set() or now >= deadline:
            kill(container)
            reason = TaskState.CANCELLED if cancel.is_set() else limited_by
            return reason, wait_for_exit(container, SETTLE_SECONDS)
        meter.sample()
        budget = min(POLL_SECONDS, deadline - now)
        if not pump.ended:
            pump.deliver(on_output, budget)
            continue
        with contextlib.suppress(requests.exceptions.RequestException):
            # The output has ended, so the process is normally gone already.
            return "", wait_for_exit(container, budget)


def run_limit(task: TaskRun) -> tuple[float, str]:
    """How long the container may run, and what stops it then: its timeout, or its price
    cap when that buys less (the pool computed the seconds; the cost is wall time)."""
    if 0 < task.price_cap_seconds < task.timeout_seconds:
        return task.price_cap_seconds, PRICE_CAP
    return task.timeout_seconds, TaskState.TIMED_OUT


def kill(container: Container) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.kill()


def wait_for_exit(container: Container, timeout: float) -> int:
    result = container.wait(timeout=max(timeout, 0.01))
    return int(result["StatusCode"])


def judge(
    task: TaskRun, stopped_because: str, exit_code: int, out_of_memory: bool, disk_full: bool
) -> tuple[str, str]:
    """(status, error) for a container that ran; ``disk_full``: it filled its own disk."""
    if stopped_because == TaskState.CANCELLED:
        return TaskState.CANCELLED, "cancelled"
    if stopped_because == TaskState.TIMED_OUT:
        return TaskState.TIMED_OUT, f"timed out after {task.timeout_seconds}s"
    if stopped_because == PRICE_CAP:
        return TaskState.FAILED, f"{PRICE_CAP_REACHED} after {task.price_cap_seconds:g}s"
    if out_of_memory:
        limit = format_bytes(task.memory_bytes, exact=True)
        return TaskState.FAILED, f"killed: out of memory (limit {limit})"
    if disk_full:
        return TaskState.FAILED, disk_limit_error(task.disk_bytes)
    if exit_code != 0:
        return TaskState.FAILED, f"exited with status {exit_code}"
    return TaskState.SUCCEEDED, ""
