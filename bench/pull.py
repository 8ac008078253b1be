"""A pull through the worker vs ``docker pull``: the same image from the same lab registry.

The image (hivemind/busybox plus a layer of LAYER_BYTES random bytes of its own) is pushed
to a docker-registry on loopback (tests/support/registry.py). Each run removes it from the
engine, then pulls it, alternately: the way the DockerExecutor does when a task names a
missing image (its pull step, progress lines and digest included; the task's own start is
docker_overhead.py's subject) and with ``docker pull``. Prints the medians of RUNS runs of
each and their ratio (goal: at most 1.1x). Needs dockerd, docker-registry (``make setup``)
and the hivemind/busybox image (``make images``).
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.pulls import image_digest
from hivemind_cluster.agent.taskrun import task_run
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.registry import LabRegistry, has_image, lab_registry

BASE = "hivemind/busybox:latest"
LAYER_BYTES = 32 << 20
RUNS = 5
GOAL = 1.1


def docker_cli_pull(reference: str) -> None:
    subprocess.run(["docker", "pull", reference], check=True, capture_output=True, timeout=300)


def worker_pull(executor: DockerExecutor) -> Callable[[str], None]:
    def pull(reference: str) -> None:
        # The run a worker makes of the pool's Assign, with the hub allowing pulls.
        assign = pb.Assign(
            task_id="bench",
            attempt=1,
            image=reference,
            command=["true"],
            resources=pb.Resources(cpu_millis=1000, memory_bytes=64 << 20),
            timeout_seconds=300,
            pull=True,
        )
        image_digest(executor.client, task_run(assign, ()), lambda _line: None, threading.Event())

    return pull


def medians(
    registry: LabRegistry, reference: str, pulls: list[Callable[[str], None]]
) -> list[float]:
    """Each pull's median over RUNS runs, taken in turn, the image removed before each."""
    timings: list[list[float]] = [[] for _ in pulls]
    for run in range(RUNS + 1):  # the first round warms the daemon up and is not counted
        for pull, times in zip(pulls, timings, strict=True):
            registry.remove(reference)
            started = time.perf_counter()
            pull(reference)
            if run:
                times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in timings]


def missing_prerequisite(client: docker.DockerClient) -> str:
    """Why the benchmark cannot run here ("" when it can)."""
    if shutil.which("docker-registry") is None:
        return "docker-registry is not installed (make setup)"
    if not has_image(client, BASE):
        return f"image {BASE} is missing: run make images"
    return ""


def main() -> int:
    available, why = DockerExecutor.probe()
    client = docker.from_env() if available else None
    why = missing_prerequisite(client) if client else f"docker is not available: {why}"
    if why or client is None:
        print(f"error: {why}", file=sys.stderr)
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="hm-bench-pull-") as tmp,
        lab_registry(Path(tmp), client) as registry,
    ):
        reference = registry.publish(BASE, "bench/busybox", "1", secrets.token_bytes(LAYER_BYTES))
        executor = DockerExecutor(Path(tmp) / "tasks", "bench", client=client)
        cli, ours = medians(registry, reference, [docker_cli_pull, worker_pull(executor)])
    client.close()
    for how, seconds in (("docker pull", cli), ("worker pull (DockerExecutor)", ours)):
        print(f"{how}, {LAYER_BYTES >> 20} MiB layer: median {seconds * 1000:.0f} ms, {RUNS} runs")
    ratio = ours / cli
    print(f"ratio {ratio:.2f}x ({'within' if ratio <= GOAL else 'over'} the {GOAL}x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
