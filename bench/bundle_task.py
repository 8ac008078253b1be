"""A Python-bundle task through the worker vs ``docker run --rm`` of the same image and command.

    python bench/bundle_task.py [--runs 5] [--json]

The bundle is the original convention's (a zip with ``main.py``, no command): its command,
image (hivemind/python:3.11) and environment come from the submission's own rules
(model/spec.py), and it runs end to end through the real DockerExecutor as a worker runs
what the pool assigns it: the bundle unpacked, the hardened container, its output streamed,
its usage sampled, ``/out`` packed, everything removed. The reference is ``docker run --rm``
of the same image, command and environment with the bundle bind-mounted at ``/work``. Both
run in turn in the same process (a first round warms up and is not counted); it prints the
median of each and their ratio (goal: at most 1.3x). Needs dockerd and the
hivemind/python:3.11 image (``make images``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import TaskRun, task_run
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.bundles import unpack_bundle
from hivemind_cluster.model.spec import with_bundle_defaults
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.registry import has_image
from tests.support.scratch import zip_of

RUNS = 5
GOAL = 1.3
# A small task of the original templates' kind: the standard library, a line of JSON out.
MAIN_PY = """\
import json, platform, statistics
print(json.dumps({"python": platform.python_version(), "mean": statistics.mean(range(100))}))
"""
BUNDLE = zip_of({"main.py": MAIN_PY})


def bundle_task(bundle: Path) -> TaskRun:
    """The run a worker makes of this bundle (its zip, fetched, at ``bundle``), submitted
    with nothing but the bundle (the hub's default CPU, memory and timeout)."""
    bundle.write_bytes(BUNDLE)
    request = with_bundle_defaults(pb.SubmitRequest(), bundle)
    assign = pb.Assign(
        task_id="bench",
        attempt=1,
        image=request.image,
        command=request.command,
        env=request.env,
        resources=pb.Resources(
            cpu_millis=HubSettings.task_cpu_millis, memory_bytes=HubSettings.task_memory_bytes
        ),
        timeout_seconds=60,
    )
    return task_run(assign, (), bundle)


def through_the_executor(executor: DockerExecutor, task: TaskRun) -> Callable[[], bytes]:
    def run() -> bytes:
        stdout: list[bytes] = []

        def on_output(stream: str, chunk: bytes) -> None:
            if stream == "stdout":
                stdout.append(chunk)

        outcome = executor.run(task, on_output, threading.Event())
        if outcome.status != "succeeded":
            raise SystemExit(f"error: the bundle task {outcome.status}: {outcome.error}")
        return b"".join(stdout)

    return run


def with_docker_run(task: TaskRun, bundle_dir: Path) -> Callable[[], bytes]:
    environment = [arg for name, value in task.env.items() for arg in ("-e", f"{name}={value}")]
    argv = ["docker", "run", "--rm", "-v", f"{bundle_dir}:/work", "-w", "/work", *environment]

    def run() -> bytes:
        done = subprocess.run(
            [*argv, task.image, *task.command], check=True, capture_output=True, timeout=60
        )
        return done.stdout

    return run


def medians(runs: int, ways: list[Callable[[], bytes]]) -> list[float]:
    """Each way's median over ``runs`` runs, taken in turn; all must print the same."""
    timings: list[list[float]] = [[] for _ in ways]
    for round_number in range(runs + 1):  # round 0 warms the daemon and the page cache up
        printed = set()
        for way, times in zip(ways, timings, strict=True):
            started = time.perf_counter()
            printed.add(way())
            if round_number:
                times.append(time.perf_counter() - started)
        if len(printed) != 1:
            raise SystemExit(f"error: the two runs printed different things: {printed}")
    return [statistics.median(times) for times in timings]


@dataclass(frozen=True)
class Result:
    image: str
    command: list[str]
    runs: int
    docker_run_ms: float
    executor_ms: float
    ratio: float
    goal: float
    within_goal: bool


def measure(runs: int) -> Result:
    client = docker.from_env()
    try:
        with tempfile.TemporaryDirectory(prefix="hm-bench-bundle-") as tmp:
            task = bundle_task(Path(tmp) / "bundle.zip")
            if not has_image(client, task.image):
                raise SystemExit(f"error: image {task.image} is missing: run make images")
            bundle_dir, work_root = Path(tmp) / "bundle", Path(tmp) / "tasks"
            bundle_dir.mkdir(mode=0o755)
            work_root.mkdir()
            unpack_bundle(BUNDLE, bundle_dir)
            executor = DockerExecutor(work_root, "bench", client=client)
            try:
                cli, ours = medians(
                    runs, [with_docker_run(task, bundle_dir), through_the_executor(executor, task)]
                )
            finally:
                executor.remove_leftovers()
    finally:
        client.close()
    ratio = ours / cli
    return Result(
        task.image,
        task.command,
        runs,
        round(cli * 1000, 1),
        round(ours * 1000, 1),
        round(ratio, 3),
        GOAL,
        ratio <= GOAL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    available, why = DockerExecutor.probe()
    if not available:
        print(f"error: docker is not available: {why}", file=sys.stderr)
        return 1
    result = measure(args.runs)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return 0
    print(
        f"a Python bundle ({' '.join(result.command)} in {result.image}), median of {result.runs}:"
    )
    print(f"  docker run --rm (bundle bind-mounted): {result.docker_run_ms:.0f} ms")
    print(f"  DockerExecutor.run (hardened, end to end): {result.executor_ms:.0f} ms")
    verdict = "within" if result.within_goal else "over"
    print(f"  ratio {result.ratio:.2f}x ({verdict} the {GOAL}x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
