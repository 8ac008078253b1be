"""Task runs as an agent receives them, for the tests and benchmarks that drive the
executor directly: one CPU, 64 MiB, 30 s, no network, no bundle, unless changed."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from hivemind_cluster.agent.taskrun import TaskRun
from hivemind_cluster.core.units import MIB
from tests.support.scratch import zip_of


def a_task(image: str, command: Iterable[str], **changes: Any) -> TaskRun:
    base = TaskRun(
        task_id=f"t{secrets.token_hex(4)}",
        attempt=1,
        image=image,
        command=list(command),
        env={},
        cpu_millis=1000,
        memory_bytes=64 * MIB,
        gpus=0,
        timeout_seconds=30,
        network=False,
        input_bundle=b"",
    )
    return replace(base, **changes)


def a_python_bundle_task(image: str, files: dict[str, str], **changes: Any) -> TaskRun:
    """``python main.py`` from a bundle of ``files`` (importable from /work), the way the
    requirements tests and benchmark run theirs."""
    return a_task(
        image,
        ["python", "main.py"],
        env={"PYTHONPATH": "/work"},
        input_bundle=zip_of(files),
        **changes,
    )
