"""`make gpu-check`: do GPU tasks work on this machine? Run it on a machine with NVIDIA GPUs.

The GPU path cannot be tested on a machine without one, so this is the check its owner runs
(as root, after ``make setup``, with the NVIDIA driver and nvidia-container-toolkit):

1. detection: the agent's own (agent/gpus.py: GPUtil, which runs ``nvidia-smi``), as a worker
   registers it;
2. a ``--gpus 1`` task running ``nvidia-smi`` in a CUDA image from a registry (IMAGE below, or
   ``HIVEMIND_GPU_CHECK_IMAGE``), pulled by the worker: submitted to a real pool on loopback
   (real Redis, mTLS gRPC) and run by a real worker with the real Docker executor;
3. two GPU tasks submitted at once: with two GPUs or more they run together and each container
   sees one device, a different one; with one GPU the second waits for the first.

Without a GPU it says so and exits 0, having checked nothing (and pulled nothing). Exits 1 when
a check fails.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivemind_cluster.agent.attemptrun import Executor
from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.facts import Facts, worker_facts
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import Cluster, run_in_cluster
from tests.support.scratch import scratch_dir_with_redis

IMAGE = "nvidia/cuda:12.4.1-base-ubuntu22.04"
IMAGE_VARIABLE = "HIVEMIND_GPU_CHECK_IMAGE"
# Each container prints the UUIDs of the GPUs it sees (the image's entrypoint may add a banner).
LIST_GPUS = "nvidia-smi --query-gpu=uuid,name --format=csv,noheader"
UUID = re.compile(r"\bGPU-[0-9A-Fa-f-]{8,}")
# Long enough for both tasks of a pair to be running together when the machine allows it.
HOLD_SECONDS = 10
PULL_TIMEOUT = 900  # the first task's timeout: it pulls the image
FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}
TOOLKIT_HINT = (
    "is nvidia-container-toolkit installed and Docker configured for it? "
    "nvidia-ctk runtime configure --runtime=docker, then restart dockerd"
)


class CheckFailed(Exception):
    """A check did not pass: why, in one line."""


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def gpu_request(command: str, timeout: int) -> pb.SubmitRequest:
    """What ``hivemind submit --gpus 1 --image IMAGE -- sh -c COMMAND`` sends."""
    return pb.SubmitRequest(
        image=os.environ.get(IMAGE_VARIABLE) or IMAGE,
        command=["sh", "-c", command],
        resources=pb.Resources(cpu_millis=500, memory_bytes=256 << 20, gpus=1),
        timeout_seconds=timeout,
        max_attempts=1,
    )


async def seen_gpus(stub: pb_grpc.TasksAsyncStub, task: pb.Task) -> list[str]:
    """The GPU UUIDs a finished task's container printed; fails unless it succeeded."""
    page = await stub.ReadLogs(pb.LogsRequest(task_id=task.id))
    stdout = b"".join(entry.data for entry in page.entries if entry.stream == "stdout").decode()
    if task.status != "succeeded":
        hint = f" ({TOOLKIT_HINT})" if "docker refused" in task.error else ""
        raise CheckFailed(f"task {task.id} {task.status}: {task.error}{hint}\n{stdout}")
    for line in stdout.splitlines():
        if UUID.search(line):
            print(f"    {task.id}: {line.strip()}")
    return UUID.findall(stdout)


async def one_gpu_task(cluster: Cluster, stub: pb_grpc.TasksAsyncStub, uuids: set[str]) -> None:
    image = os.environ.get(IMAGE_VARIABLE) or IMAGE
    say(f"a --gpus 1 task running nvidia-smi in {image} (the worker pulls it if missing)")
    task = await stub.Submit(gpu_request(LIST_GPUS, PULL_TIMEOUT))
    done = await cluster.wait_status(stub, task.id, FINISHED, timeout=PULL_TIMEOUT + 30)
    seen = await seen_gpus(stub, done)
    if len(seen) != 1 or seen[0] not in uuids:
        raise CheckFailed(f"the container should see one of this machine's GPUs, it saw {seen}")
    print(f"    ran on {seen[0]}, image {done.attempts[-1].image_digest}")


async def two_gpu_tasks(cluster: Cluster, stub: pb_grpc.TasksAsyncStub, uuids: set[str]) -> None:
    say(f"two GPU tasks at once on {len(uuids)} GPU(s), each holding its GPU {HOLD_SECONDS}s")
    request = gpu_request(f"{LIST_GPUS} && sleep {HOLD_SECONDS}", 300)
    submitted = [await stub.Submit(request) for _ in range(2)]
    first, second = sorted(
        [await cluster.wait_status(stub, t.id, FINISHED, timeout=360) for t in submitted],
        key=lambda task: task.started_at,
    )
    seen = [await seen_gpus(stub, task) for task in (first, second)]
    if any(len(gpus) != 1 or gpus[0] not in uuids for gpus in seen):
        raise CheckFailed(f"each container should see one of this machine's GPUs: {seen}")
    together = second.started_at < first.ended_at
    if len(uuids) == 1:
        if together:
            raise CheckFailed("with one GPU the two tasks ran at the same time")
        print("    one GPU: the second task waited for the first to end")
        return
    if not together:
        raise CheckFailed(f"with {len(uuids)} GPUs the two tasks should have run together")
    if seen[0] == seen[1]:
        raise CheckFailed(f"the two tasks running together shared GPU {seen[0][0]}")
    print(f"    ran together on different GPUs: {seen[0][0]} and {seen[1][0]}")


def run_checks(facts: Facts, executor: Executor, redis_server: RedisServer, workdir: Path) -> None:
    """The task checks, on a pool on loopback with one worker: this machine, its GPUs, and
    ``executor`` (the Docker one, but for the check's own tests)."""
    uuids = {gpu.uuid for gpu in facts.gpus}

    async def checks(cluster: Cluster) -> None:
        await cluster.start_worker(
            "gpu-worker", executor, capacity=facts.capacity, gpus=tuple(facts.gpus)
        )
        stub = await cluster.operator_stub()
        await one_gpu_task(cluster, stub, uuids)
        await two_gpu_tasks(cluster, stub, uuids)

    (workdir / "hub").mkdir()
    run_in_cluster(redis_server, workdir / "hub", checks)


def with_docker(facts: Facts, redis_server: RedisServer, workdir: Path) -> None:
    """``run_checks`` with the real Docker executor, its containers removed afterwards."""
    (workdir / "tasks").mkdir()
    executor = DockerExecutor(workdir / "tasks", "gpu-worker")
    try:
        run_checks(facts, executor, redis_server, workdir)
    finally:
        executor.remove_leftovers()


def main() -> int:
    facts = worker_facts()
    if not facts.gpus:
        say("no NVIDIA GPU detected on this machine (nvidia-smi missing or reporting none)")
        print("nothing was checked: run make gpu-check on a machine with an NVIDIA GPU")
        return 0
    say(f"detected {len(facts.gpus)} GPU(s) through GPUtil/nvidia-smi:")
    for gpu in facts.gpus:
        print(f"    {gpu.index}: {gpu.model}, {gpu.memory_bytes >> 20} MiB, {gpu.uuid}")
    if not facts.docker_available:
        print("error: docker is not available (make setup starts it)", file=sys.stderr)
        return 1
    try:
        with scratch_dir_with_redis("hm-gpu-check-") as (workdir, redis_server):
            with_docker(facts, redis_server, workdir)
    except (CheckFailed, AssertionError) as failed:
        print(f"gpu-check FAILED: {failed}", file=sys.stderr)
        return 1
    say("gpu-check passed: detection, a CUDA image from a registry, one GPU per task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
