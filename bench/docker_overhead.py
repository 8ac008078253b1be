"""Docker overhead of the executor: a no-op task via ``DockerExecutor.run`` vs ``docker run --rm``.

Prints the median of RUNS runs of each and their ratio (goal: at most 1.3x). Needs dockerd and
the hivemind/busybox image (``make images``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import TaskRun

IMAGE = "hivemind/busybox:latest"
RUNS = 5
GOAL = 1.3


def median_seconds(action: Callable[[], None]) -> float:
    action()  # warm-up: image layers and the daemon's caches
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def docker_cli_noop() -> None:
    subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True, capture_output=True)


def executor_noop(executor: DockerExecutor) -> Callable[[], None]:
    def run() -> None:
        task = TaskRun(
            task_id="bench",
            attempt=1,
            image=IMAGE,
            command=["true"],
            env={},
            cpu_millis=1000,
            memory_bytes=64 * 1024 * 1024,
            gpus=0,
            timeout_seconds=30,
            network=False,
        )
        outcome = executor.run(task, lambda _stream, _chunk: None, threading.Event())
        if outcome.status != "succeeded":
            raise SystemExit(f"error: the no-op task {outcome.status}: {outcome.error}")

    return run


def main() -> int:
    available, why = DockerExecutor.probe()
    if not available:
        print(f"error: docker is not available: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hm-bench-") as work_root:
        executor = DockerExecutor(Path(work_root), node_id="bench")
        try:
            cli = median_seconds(docker_cli_noop)
            ours = median_seconds(executor_noop(executor))
        finally:
            executor.remove_leftovers()
    ratio = ours / cli
    print(f"docker run --rm {IMAGE} true: median {cli * 1000:.0f} ms over {RUNS} runs")
    print(f"DockerExecutor.run (hardened): median {ours * 1000:.0f} ms over {RUNS} runs")
    verdict = "within" if ratio <= GOAL else "over"
    print(f"ratio {ratio:.2f}x ({verdict} the {GOAL}x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
