"""The hardened container a task runs in: its ``create()`` options and the directories it
mounts.

Every container gets the platform defaults: no network unless asked (then Docker's default
bridge, from which the worker's nftables table lets it reach the outside world only, never
the overlay, the hub or the worker itself: agent/tasknet.py), a read-only root, no
capabilities, no-new-privileges, user nobody, a pids limit, the CPU and memory that were paid
for (no swap), and labels naming this node so that a restarted agent finds what it left
behind. The input bundle is unpacked into ``work``, the task's
writable working directory ``/work``; ``work``, ``out`` (``/out``) and ``tmp`` (``/tmp``) sit
on a filesystem of the task's disk limit (agent/taskdisk.py) and are owned by nobody.

Inputs are mounted read-only at ``/work/inputs/<name>``: a ``file`` straight from the
worker's input cache (never copied), a ``dir`` unpacked into ``inputs/<name>`` beside
``work`` on the task's disk (so it counts toward the limit). Their mountpoints are made in
``work`` before its snapshot is taken, so they never come back as results.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest, LogConfig, Mount

from hivemind_cluster.agent.taskrun import TaskInput, TaskRun
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.model.blobs import DIR, INPUTS_DIR
from hivemind_cluster.model.bundles import unpack_bundle

NOBODY = 65534
LABEL_NODE = "hivemind.node"


def container_options(task: TaskRun, node_id: str, pids_limit: int) -> dict[str, Any]:
    """The create() arguments for a task (apart from mounts): the platform's hardening."""
    options: dict[str, Any] = {
        "name": f"hm-{task.task_id}-{task.attempt}-{secrets.token_hex(3)}",
        "labels": {
            LABEL_NODE: node_id,
            "hivemind.task": task.task_id,
            "hivemind.attempt": str(task.attempt),
        },
        "environment": dict(task.env),
        "working_dir": "/work",
        "user": f"{NOBODY}:{NOBODY}",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids_limit,
        "network_mode": "bridge" if task.network else "none",
        # Output is read from the attach stream; nothing needs to be kept on the host's disk.
        "log_config": LogConfig(type="none"),
    }
    if task.command:
        options["command"] = list(task.command)
    if task.cpu_millis > 0:
        options["nano_cpus"] = task.cpu_millis * 1_000_000
    if task.memory_bytes > 0:
        options["mem_limit"] = task.memory_bytes
        options["memswap_limit"] = task.memory_bytes
    if task.gpu_ids:
        options["device_requests"] = [
            DeviceRequest(device_ids=list(task.gpu_ids), capabilities=[["gpu"]])
        ]
    elif task.gpus > 0:
        options["device_requests"] = [DeviceRequest(count=task.gpus, capabilities=[["gpu"]])]
    return options


def task_mounts(work: Path, out: Path) -> dict[str, dict[str, str]]:
    """The working copy at ``/work``, the output directory at ``/out`` and the ``tmp`` beside
    them at ``/tmp``, all writable and all on the task's own disk."""
    tmp = work.parent / "tmp"
    return {
        str(work): {"bind": "/work", "mode": "rw"},
        str(out): {"bind": "/out"},
        str(tmp): {"bind": "/tmp", "mode": "rw"},
    }


def prepare_task_directory(root: Path, task: TaskRun) -> tuple[Path, Path]:
    """Fresh ``work`` (the unpacked bundle, the task's to change), ``out`` and ``tmp`` on the
    task's own disk mounted at ``root`` (agent/taskdisk.py), owned by the task's user, and
    the task's ``dir`` inputs unpacked and every input's mountpoint made."""
    work, out, tmp = root / "work", root / "out", root / "tmp"
    for directory, mode in ((work, 0o755), (out, 0o755), (tmp, 0o1777)):
        directory.mkdir()
        directory.chmod(mode)
        os.chown(directory, NOBODY, NOBODY)
    if task.bundle is not None:
        try:
            unpack_bundle(task.bundle, work)
        except InvalidInput as error:
            raise InvalidInput(f"bad input bundle: {error.message}") from None
        for folder, dirs, files in os.walk(work):
            for name in dirs + files:
                os.lchown(os.path.join(folder, name), NOBODY, NOBODY)
    if task.inputs:
        make_mountpoints(work / INPUTS_DIR, task.inputs)
        for unpacked in task.inputs:
            if unpacked.kind == DIR:
                unpack_input(unpacked, root / INPUTS_DIR)
    return work, out


def make_mountpoints(under: Path, inputs: tuple[TaskInput, ...]) -> None:
    """An empty file or directory where each input is mounted (``under`` is the working
    copy's ``inputs``, the task's; a bundle's own file of the same name is refused)."""
    if not under.is_dir() or under.is_symlink():
        if under.exists() or under.is_symlink():
            raise InvalidInput(f"the bundle has a file {INPUTS_DIR}, where the inputs go")
        under.mkdir(mode=0o755)
        os.chown(under, NOBODY, NOBODY)
    for mounted in inputs:
        target = under / mounted.name
        if os.path.lexists(target):
            raise InvalidInput(f"input {mounted.name}: the bundle has {INPUTS_DIR}/{mounted.name}")
        if mounted.kind == DIR:
            target.mkdir(mode=0o755)
        else:
            target.touch(mode=0o444)
        os.lchown(target, NOBODY, NOBODY)


def unpack_input(unpacked: TaskInput, under: Path) -> None:
    """A ``dir`` input unpacked on the task's disk, world-readable, the task's to read only."""
    under.mkdir(mode=0o755, exist_ok=True)
    try:
        unpack_bundle(unpacked.path, under / unpacked.name)
    except InvalidInput as error:
        raise InvalidInput(f"input {unpacked.name}: {error.message}") from None


def input_mounts(root: Path, inputs: tuple[TaskInput, ...]) -> list[Mount]:
    """Each input read-only at ``/work/inputs/<name>``: a file from the cache, a directory
    from where it was unpacked."""
    mounts = []
    for mounted in inputs:
        source = root / INPUTS_DIR / mounted.name if mounted.kind == DIR else mounted.path
        target = f"/work/{INPUTS_DIR}/{mounted.name}"
        mounts.append(Mount(target, str(source), type="bind", read_only=True))
    return mounts
