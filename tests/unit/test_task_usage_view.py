"""A task's usage over its run in its view (``hivemind status --json``, the web's task
page): its samples in time order, and for a running task one line of what it uses now."""

from __future__ import annotations

import time

from hivemind_cluster.client import views
from hivemind_cluster.protos import pool_pb2 as pb


def a_task(status: str, samples: list[pb.UsageSample]) -> views.View:
    return views.task_view(
        pb.Task(
            id="t1",
            status=status,
            attempt=1,
            max_attempts=3,
            image="hivemind/python:3.11",
            command=["python", "main.py"],
            resources=pb.Resources(cpu_millis=2000, memory_bytes=256 << 20),
            timeout_seconds=60,
            usage_samples=samples,
        )
    )


def test_the_view_lists_the_samples_and_a_running_task_says_what_it_uses_now() -> None:
    now = time.time()
    samples = [
        pb.UsageSample(time=now - 5 * 3600 - 15, cpu_cores=0.5, memory_bytes=10 << 20),
        pb.UsageSample(time=now - 5 * 3600, cpu_cores=1.75, memory_bytes=48 << 20),
    ]
    running = a_task("running", samples)
    assert running["usage_samples"] == [
        {"time": now - 5 * 3600 - 15, "cpu_cores": 0.5, "memory_bytes": 10 << 20},
        {"time": now - 5 * 3600, "cpu_cores": 1.75, "memory_bytes": 48 << 20},
    ]
    lines = views.describe_task(running).splitlines()
    assert "using     1.75 CPU cores, 48 MiB (5h ago)" in lines
    ended = views.describe_task(a_task("succeeded", samples))
    assert "using" not in ended and "usage     " in ended


def test_a_task_without_samples_has_an_empty_list_and_no_line() -> None:
    task = a_task("running", [])
    assert task["usage_samples"] == []
    assert "using" not in views.describe_task(task)
