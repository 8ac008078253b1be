"""What a worker hands the executor (``TaskRun``) and what it gets back (``Outcome``), and
how each is made from and turned into the pool's messages (``Assign``, ``TaskResult``).

Inputs and results travel as files, never as bytes in memory: a ``TaskRun`` names the
fetched bundle and inputs in the worker's cache (agent/inputs.py), an ``Outcome`` the result
zip the executor packed in the agent's state directory (sent by agent/results.py).

Kept apart from the Docker code so that the worker, the pool's tests and anything else that
only speaks in tasks and outcomes need not import Docker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hivemind_cluster.agent.usagesamples import UsageSeries
from hivemind_cluster.model.states import TaskState
from hivemind_cluster.protos import pool_pb2 as pb

# Called with ("stdout" or "stderr", a chunk) as the task's output arrives.
OnOutput = Callable[[str, bytes], None]


def system_notes(on_output: OnOutput) -> Callable[[str], None]:
    """Lines of the worker's own about the task (its inputs' fetch, its image's pull), for
    the task's log."""
    return lambda line: on_output("system", line.encode())


@dataclass(frozen=True)
class TaskInput:
    """A fetched input: a ``file`` mounted as it is, or a ``dir`` (a zip) unpacked, read-only
    at ``/work/inputs/<name>``."""

    name: str
    kind: str  # model/blobs.py FILE | DIR
    path: Path  # the blob in the worker's input cache


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
    # The GPUs the worker set aside for this task (indices or UUIDs); empty: any `gpus`.
    gpu_ids: tuple[str, ...] = ()
    # The hub allows pulls: a missing image is pulled from its registry (else the task fails).
    pull: bool = False
    # The size of the task's own disk (working copy, /out and /tmp); 0: the agent's default.
    disk_bytes: int = 0
    # The wall seconds its price cap buys: it is stopped there, failed "price cap reached".
    # 0: the timeout comes first.
    price_cap_seconds: float = 0.0
    # The zip unpacked into the writable /work (None: none), and the read-only inputs.
    bundle: Path | None = None
    inputs: tuple[TaskInput, ...] = ()
    # Where the executor puts its usage over time; the worker sends it in its heartbeats.
    usage: UsageSeries = field(default_factory=UsageSeries, compare=False, repr=False)


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_memory_bytes: int
    wall_seconds: float
    gpu_seconds: float


NO_USAGE = Usage(0.0, 0, 0.0, 0.0)


@dataclass(frozen=True)
class ResultFile:
    """The result zip of an attempt (/out and the changed working copy), packed to a file."""

    path: Path
    digest: str  # sha256:…
    size: int


@dataclass(frozen=True)
class Outcome:
    status: str  # "succeeded" | "failed" | "timed_out" | "cancelled"
    exit_code: int  # -1 when the container never ran
    error: str  # "" or one line
    usage: Usage
    output: ResultFile | None = None  # None: nothing was written
    image_digest: str = ""  # the image it ran (sha256:…), "" when it never had one


def never_ran(error: str, status: str = TaskState.FAILED) -> Outcome:
    return Outcome(status, -1, error, NO_USAGE)


def task_run(
    assign: pb.Assign,
    gpu_ids: tuple[str, ...],
    bundle: Path | None = None,
    inputs: tuple[TaskInput, ...] = (),
    usage: UsageSeries | None = None,
) -> TaskRun:
    """The run an ``Assign`` asks for, on the GPUs the worker set aside for it, with its
    bundle and inputs as the worker fetched them (and its usage samples, into ``usage``)."""
    return TaskRun(
        task_id=assign.task_id,
        attempt=assign.attempt,
        image=assign.image,
        command=list(assign.command),
        env=dict(assign.env),
        cpu_millis=assign.resources.cpu_millis,
        memory_bytes=assign.resources.memory_bytes,
        gpus=assign.resources.gpus,
        timeout_seconds=assign.timeout_seconds,
        network=assign.network,
        gpu_ids=gpu_ids,
        pull=assign.pull,
        disk_bytes=assign.disk_bytes,
        price_cap_seconds=assign.price_cap_seconds,
        bundle=bundle,
        inputs=inputs,
        usage=usage or UsageSeries(),
    )


def task_result(task: TaskRun, outcome: Outcome | None, status: str, error: str) -> pb.TaskResult:
    """The result the pool is sent. ``status`` and ``error`` are the worker's word, not
    always the outcome's (an interrupted attempt is reported interrupted whatever the
    container did); without an outcome (the executor failed) the exit code is -1. It names
    the outcome's result zip, which is sent (Blobs.WriteResult) before the result is."""
    result = pb.TaskResult(task_id=task.task_id, attempt=task.attempt, status=status, error=error)
    if outcome is None:
        result.exit_code = -1
        return result
    result.exit_code = outcome.exit_code
    result.usage.CopyFrom(
        pb.Usage(
            cpu_seconds=outcome.usage.cpu_seconds,
            peak_memory_bytes=outcome.usage.peak_memory_bytes,
            wall_seconds=outcome.usage.wall_seconds,
            gpu_seconds=outcome.usage.gpu_seconds,
        )
    )
    if outcome.output is not None:
        result.output_digest = outcome.output.digest
        result.output_size = outcome.output.size
    result.image_digest = outcome.image_digest
    return result
