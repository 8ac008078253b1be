"""The hardened container a task runs in: its ``create()`` options and the directories it
mounts.

Every container gets the platform defaults: no network unless asked, a read-only root with a
small tmpfs ``/tmp``, no capabilities, no-new-privileges, user nobody, a pids limit, the CPU
and memory that were paid for (no swap), and labels naming this node so that a restarted
agent finds what it left behind. The input bundle is unpacked into ``work`` (mounted
read-only at ``/work``); ``out``, owned by nobody, is the only place the task can write to
that outlives it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest, LogConfig

from hivemind_cluster.agent.taskrun import TaskRun
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
        "tmpfs": {"/tmp": "rw,size=64m,mode=1777"},
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
    """The bundle read-only at ``/work``, the output directory writable at ``/out``."""
    return {str(work): {"bind": "/work", "mode": "ro"}, str(out): {"bind": "/out"}}


def prepare_task_directory(task_dir: Path, bundle: bytes) -> tuple[Path, Path]:
    """Fresh ``work`` (the unpacked bundle) and ``out`` (writable by the task) directories."""
    shutil.rmtree(task_dir, ignore_errors=True)
    work, out = task_dir / "work", task_dir / "out"
    for directory in (task_dir, work, out):
        directory.mkdir(parents=True)
        directory.chmod(0o755)
    os.chown(out, NOBODY, NOBODY)
    if bundle:
        unpack_bundle(bundle, work)
    return work, out
