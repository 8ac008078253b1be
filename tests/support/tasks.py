"""Task runs as an agent receives them, for the tests and benchmarks that drive the
executor directly: one CPU, 64 MiB, 30 s, no network, no bundle, unless changed. A bundle
is a zip file, as the worker's input cache holds it (``TaskRun.bundle``) and the hub's blob
store does (``bundle_data``, for the checks of a submission)."""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hivemind_cluster.agent.taskrun import TaskRun
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.blobs import InputRef, hash_file
from hivemind_cluster.model.spec import TaskData
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
    )
    return replace(base, **changes)


def bundle_file(files: Mapping[str, str | bytes], directory: Path) -> Path:
    """A zip of ``files`` written into ``directory``, as a fetched bundle is (a new name
    each time)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bundle-{secrets.token_hex(4)}.zip"
    path.write_bytes(zip_of(files))
    return path


def bundle_data(files: Mapping[str, str | bytes], directory: Path) -> TaskData:
    """A submission's bundle of ``files`` as the hub holds it, for ``check_submission``'s
    ``data``: its zip in ``directory``, by digest."""
    path = bundle_file(files, directory)
    digest = hash_file(path).digest
    return TaskData(InputRef("", digest, path.stat().st_size), files={digest: path})


@contextlib.contextmanager
def held_bundle(files: Mapping[str, str | bytes]) -> Iterator[TaskData]:
    """``bundle_data`` of ``files`` in a directory of its own, removed after the block."""
    with tempfile.TemporaryDirectory(prefix="hm-bundle-") as directory:
        yield bundle_data(files, Path(directory))


def a_python_bundle_task(
    image: str, files: dict[str, str], directory: Path, **changes: Any
) -> TaskRun:
    """``python main.py`` from a bundle of ``files`` (importable from /work), its zip in
    ``directory``, the way the requirements tests and benchmark run theirs."""
    return a_task(
        image,
        ["python", "main.py"],
        env={"PYTHONPATH": "/work"},
        bundle=bundle_file(files, directory),
        **changes,
    )
