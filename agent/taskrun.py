"""What a worker hands the executor (``TaskRun``) and what it gets back (``Outcome``), and
how each is made from and turned into the pool's messages (``Assign``, ``TaskResult``).

Kept apart from the Docker code so that the worker, the pool's tests and anything else that
only speaks in tasks and outcomes need not import Docker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hivemind_cluster.model.states import TaskState
from hivemind_cluster.protos import pool_pb2 as pb

# Called with ("stdout" or "stderr", a chunk) as the task's output arrives.
OnOutput = Callable[[str, bytes], None]


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
    # The hub allows pulls: a missing image is pulled from its registry (else the task fails).
    pull: bool = False
    # The size of the task's own disk (working copy, /out and /tmp); 0: the agent's default.
    disk_bytes: int = 0
    # The wall seconds its price cap buys: it is stopped there, failed "price cap reached".
    # 0: the timeout comes first.
    price_cap_seconds: float = 0.0


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
    output_bundle: bytes  # zip of /out and the changed working copy, b"" if nothing was written
    image_digest: str = ""  # the image it ran (sha256:…), "" when it never had one


def never_ran(error: str, status: str = TaskState.FAILED) -> Outcome:
    return Outcome(status, -1, error, NO_USAGE, b"")


def task_run(assign: pb.Assign, gpu_ids: tuple[str, ...]) -> TaskRun:
    """The run an ``Assign`` asks for, on the GPUs the worker set aside for it."""
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
        input_bundle=assign.input_bundle,
        gpu_ids=gpu_ids,
        pull=assign.pull,
        disk_bytes=assign.disk_bytes,
        price_cap_seconds=assign.price_cap_seconds,
    )


def task_result(task: TaskRun, outcome: Outcome | None, status: str, error: str) -> pb.TaskResult:
    """The result the pool is sent. ``status`` and ``error`` are the worker's word, not
    always the outcome's (an interrupted attempt is reported interrupted whatever the
    container did); without an outcome (the executor failed) the exit code is -1."""
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
    result.output_bundle = outcome.output_bundle
    result.image_digest = outcome.image_digest
    return result
