"""The start of a task with a requirements.txt: first run (download and install) vs cached.

A task in hivemind/python:3.11 names packages of a lab package index on loopback
(tests/support/package_index.py, a PEP 503 directory), in three workloads: ``hmlab``, a tiny
wheel built here that needs a second one (the fixed cost of the steps alone); ``requests``
and ``pandas==2.3.3`` with their dependencies, real wheels (some cp311 manylinux) copied from
this machine's disk (/opt/pypi/files; a workload whose wheels are not there is left out).
"Start" is the time from ``DockerExecutor.run`` to the task's first line
of output (it prints as soon as its import succeeds): its image check, its requirements, its
container's creation and start, and the import. A first run starts with an empty cache; a
cached run finds the install from an earlier task. Prints the medians of RUNS runs of each and
their ratio (goal: the cached start at least 10x faster). Needs dockerd and the
hivemind/python:3.11 image (``make images``).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.requirements import Requirements
from hivemind_cluster.agent.taskrun import TaskRun
from hivemind_cluster.core.units import MIB
from tests.support.package_index import LabIndex, served
from tests.support.registry import has_image
from tests.support.tasks import a_python_bundle_task

IMAGE = "hivemind/python:3.11"
RUNS = 3
GOAL = 10.0
REAL_WHEELS = Path("/opt/pypi/files")
# (what it is called, requirements.txt, main.py, the wheels it needs from REAL_WHEELS)
TINY = ("tiny lab wheel + 1 dependency", "hmlab==1.0\n", "import hmlab\nprint('ready')\n", ())
REQUESTS = (
    "requests + 4 dependencies",
    "requests\n",
    "import requests\nprint('ready')\n",
    ("requests-", "urllib3-", "certifi-", "idna-", "charset_normalizer-"),
)
PANDAS = (
    "pandas==2.3.3 + 5 dependencies",
    "pandas==2.3.3\nnumpy<2\n",
    "import pandas\nprint('ready')\n",
    ("pandas-2.3.3-", "numpy-1.26.4-", "python_dateutil-", "pytz-", "tzdata-", "six-"),
)
Workload = tuple[str, str, str, tuple[str, ...]]


def workload_task(workload: Workload, bundles: Path) -> TaskRun:
    files = {"main.py": workload[2], "requirements.txt": workload[1]}
    return a_python_bundle_task(IMAGE, files, bundles, memory_bytes=256 * MIB, timeout_seconds=300)


def start_seconds(executor: DockerExecutor, workload: Workload) -> float:
    """Seconds from run() to the task's first output; the task must succeed."""
    first: list[float] = []

    def on_output(stream: str, data: bytes) -> None:
        if stream == "stdout" and not first:
            first.append(time.perf_counter())

    started = time.perf_counter()
    bundles = executor.work_root.parent / "bundles"
    outcome = executor.run(workload_task(workload, bundles), on_output, threading.Event())
    if outcome.status != "succeeded" or not first:
        raise SystemExit(f"error: the benchmark task did not succeed: {outcome.error}")
    return first[0] - started


def medians(executor: DockerExecutor, workload: Workload) -> tuple[float, float]:
    """(first-run median, cached-run median) over RUNS runs each."""
    start_seconds(executor, workload)  # warms the daemon and the image up; not counted
    first_runs, cached_runs = [], []
    for _ in range(RUNS):
        shutil.rmtree(executor.requirements.root, ignore_errors=True)
        executor.requirements.sizes.clear()
        first_runs.append(start_seconds(executor, workload))
        cached_runs.append(start_seconds(executor, workload))
    return statistics.median(first_runs), statistics.median(cached_runs)


def lab_index(root: Path) -> tuple[LabIndex, list[Workload]]:
    """The lab index, and the workloads it can serve (requests only where its wheels are)."""
    lab = LabIndex(root)
    lab.add_wheel("hmlabdep", "1.0", "WORD = 'ok'\n")
    lab.add_wheel("hmlab", "1.0", "from hmlabdep import WORD as VALUE\n", ("hmlabdep",))
    workloads: list[Workload] = [TINY]
    for workload in (REQUESTS, PANDAS):
        wheels = [w for w in sorted(REAL_WHEELS.glob("*.whl")) if w.name.startswith(workload[3])]
        if len(wheels) == len(workload[3]):
            for wheel in wheels:
                lab.add_file(wheel)
            workloads.append(workload)
    return lab, workloads


def report(workload: Workload, first: float, cached: float) -> None:
    for how, seconds in (("first run (download, install)", first), ("cached run", cached)):
        print(f"{workload[0]}, {how}: median {seconds * 1000:.0f} ms, {RUNS} runs")
    ratio = first / cached
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"{workload[0]}: cached start {ratio:.1f}x faster ({verdict} the {GOAL:.0f}x goal)")


def main() -> int:
    available, why = DockerExecutor.probe()
    if not available:
        print(f"error: docker is not available: {why}", file=sys.stderr)
        return 1
    client = docker.from_env()
    if not has_image(client, IMAGE):
        print(f"error: image {IMAGE} is missing: run make images", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hm-bench-requirements-") as tmp:
        lab, workloads = lab_index(Path(tmp) / "index")
        with served(lab):
            cache = Requirements(Path(tmp) / "cache", lab.url)
            executor = DockerExecutor(Path(tmp) / "tasks", "bench", client, requirements=cache)
            results = [(workload, *medians(executor, workload)) for workload in workloads]
    client.close()
    print("task start with requirements.txt (run() to the task's first output line):")
    for workload, first, cached in results:
        report(workload, first, cached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
