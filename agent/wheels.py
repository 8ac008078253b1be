"""The three steps that turn a task's requirements into a directory it can import from.

1. **Probe** the task's image (a container with no network, no user code) for the wheel tags
   its Python accepts: its version, implementation, ABIs and platforms.
2. **Download** wheels only (``--only-binary=:all:``, dependencies included) with the
   worker's own pip, for those tags, from the worker's package index. This runs on the host,
   not in a container of the task's image: the image is the user's code as much as the bundle
   is (its ``python`` or ``pip`` could be anything), so running it with network would hand the
   task the network it was refused. Wheels only means no ``setup.py`` runs on the host.
3. **Install** them inside a container of the task's image with no network (``pip install
   --no-index --find-links /wheels --target /deps``): whatever the wheels do at install time
   happens in the sandbox, hardened like a task.

Each step's output reaches the task's log line by line; a step that fails raises
RequirementsUnmet with pip's reason in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from hivemind_cluster.agent.output import POLL_SECONDS
from hivemind_cluster.agent.sandbox import LABEL_NODE, NOBODY
from hivemind_cluster.core.console import one_line
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.states import TaskState

Note = Callable[[str], None]  # one line for the task's log
REQUIREMENTS_NAME = "requirements.txt"
INSTALL_MEMORY_BYTES = 1024 * MIB
PROBE_SECONDS = 60
# Tags the probe may report: plain words, so that they pass to pip as nothing but values.
TAG = re.compile(r"^[a-z0-9_.]{1,64}$")
VERSION = re.compile(r"^[0-9]{1,2}\.[0-9]{1,3}$")
MAX_TAGS = 400
KILLED = 137  # 128 + SIGKILL: what the kernel's OOM killer leaves
# Run with the image's own interpreter: the tags it accepts, from the packaging its pip carries.
PROBE = (
    "import json, sys\n"
    "from pip._vendor.packaging import tags\n"
    "found = list(tags.sys_tags())\n"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2],\n"
    " 'implementation': tags.interpreter_name(),\n"
    " 'abis': list(dict.fromkeys(t.abi for t in found)),\n"
    " 'platforms': list(dict.fromkeys(t.platform for t in found if t.platform != 'any'))}))\n"
)


class RequirementsUnmet(Exception):
    """The task's requirements cannot be installed: why, in one line, and the task's status."""

    def __init__(self, message: str, status: str = TaskState.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Deadline:
    """The task's cancel event and its timeout, which bound every step."""

    def __init__(self, cancel: threading.Event, timeout_seconds: int) -> None:
        self.cancel = cancel
        self.timeout_seconds = timeout_seconds
        self.at = time.monotonic() + timeout_seconds

    def check(self) -> None:
        if self.cancel.is_set():
            raise RequirementsUnmet("cancelled", TaskState.CANCELLED)
        if time.monotonic() >= self.at:
            raise RequirementsUnmet(
                f"timed out after {self.timeout_seconds}s installing {REQUIREMENTS_NAME}",
                TaskState.TIMED_OUT,
            )


def forward(
    chunks: Iterable[bytes], note: Note, deadline: Deadline, stop: Callable[[], None]
) -> list[str]:
    """Every line of ``chunks`` (read on a thread of its own) to ``note``; returns them.

    Cancel or timeout calls ``stop`` (kill the process or container) and raises.
    """
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        pending = b""
        try:
            for chunk in chunks:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    lines.put(line.decode(errors="replace"))
            if pending:
                lines.put(pending.decode(errors="replace"))
        except Exception as error:  # the stream broke: the exit status tells the rest
            lines.put(f"(output stream ended: {one_line(str(error))})")
        finally:
            lines.put(None)

    threading.Thread(target=read, name="requirements-output", daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            deadline.check()
        except RequirementsUnmet:
            stop()
            raise
        try:
            line = lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        if line is None:
            return seen
        if line.strip():
            seen.append(one_line(line))
            note(seen[-1])


def reason(lines: list[str], exit_code: int) -> str:
    """pip's reason in one line: its first ``ERROR:`` line, else how it ended."""
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[0]
    killed = " (killed: out of memory)" if exit_code == KILLED else ""
    last = f" after {lines[-1]!r}" if lines else ""
    return f"pip exited with status {exit_code}{killed}{last}"


def sandboxed(
    image: str,
    node_id: str,
    command: list[str],
    mounts: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """create() arguments for a step run in the task's image: no network, hardened like a
    task, labelled with this node so that a restarted agent removes it."""
    return {
        "image": image,
        "entrypoint": ["python"],
        "command": command,
        "labels": {LABEL_NODE: node_id, "hivemind.step": "requirements"},
        "volumes": mounts,
        "environment": {"HOME": "/tmp", "PIP_NO_INPUT": "1"},
        "working_dir": "/tmp",
        "user": f"{NOBODY}:{NOBODY}",
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,size=256m,mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": 256,
        "mem_limit": INSTALL_MEMORY_BYTES,
        "memswap_limit": INSTALL_MEMORY_BYTES,
        "nano_cpus": 1_000_000_000,
    }


def run_in_image(
    client: docker.DockerClient, options: dict[str, Any], note: Note, deadline: Deadline
) -> tuple[int, list[str]]:
    """Run one step's container to its end; (exit code, its output lines)."""
    container = client.containers.create(**options)
    try:
        container.start()
        lines = forward(
            container.logs(stream=True, follow=True),
            note,
            deadline,
            lambda: container.kill(),
        )
        return int(container.wait(timeout=PROBE_SECONDS)["StatusCode"]), lines
    finally:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)


def probe_tags(
    client: docker.DockerClient, image: str, node_id: str, deadline: Deadline
) -> list[str]:
    """pip download's target options (``--python-version`` …) for the image's Python."""
    options = sandboxed(image, node_id, ["-c", PROBE], {})
    exit_code, lines = run_in_image(client, options, lambda line: None, deadline)
    try:
        found = json.loads(lines[-1])
        version, implementation = str(found["version"]), str(found["implementation"])
        abis, platforms = list(found["abis"]), list(found["platforms"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise RequirementsUnmet(
            f"{REQUIREMENTS_NAME} needs an image with python and pip; {image} has none "
            f"({reason(lines, exit_code)})"
        ) from None
    tags = [implementation, *abis, *platforms]
    if not VERSION.match(version) or len(tags) > MAX_TAGS or not all(map(TAG.match, tags)):
        raise RequirementsUnmet(f"{image} reports Python tags pip cannot use")
    arguments = ["--python-version", version, "--implementation", implementation]
    arguments += [f"--abi={abi}" for abi in abis]
    return arguments + [f"--platform={platform}" for platform in platforms]


def download(
    wheels: Path, targets: list[str], index_url: str, note: Note, deadline: Deadline
) -> None:
    """Wheels for ``wheels/requirements.txt`` and their dependencies, into ``wheels``."""
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-input"]
    command += ["--disable-pip-version-check", "--no-cache-dir", "--progress-bar", "off"]
    # Run in ``wheels`` and named relative to it: the worker's paths stay out of the task's log.
    command += ["--dest", ".", *targets, "-r", REQUIREMENTS_NAME]
    if index_url:
        command += ["--index-url", index_url]
        if urllib.parse.urlsplit(index_url).scheme == "http":
            # The worker's own choice of index: pip would otherwise ignore plain HTTP to any
            # host but this one (the hashes on the index's pages are still checked).
            command += ["--trusted-host", str(urllib.parse.urlsplit(index_url).netloc)]
    process = subprocess.Popen(
        command,
        cwd=wheels,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    with process:
        lines = forward(process.stdout, note, deadline, process.kill)
        exit_code = process.wait()
    if exit_code != 0:
        raise RequirementsUnmet(f"{REQUIREMENTS_NAME} cannot be met: {reason(lines, exit_code)}")
    for wheel in wheels.iterdir():
        wheel.chmod(0o644)  # the install reads them as nobody, whatever the agent's umask


def install(
    client: docker.DockerClient,
    image: str,
    node_id: str,
    build: Path,
    note: Note,
    deadline: Deadline,
) -> None:
    """Install ``build/wheels`` into ``build/deps`` inside the image, with no network."""
    deps = build / "deps"
    deps.mkdir(mode=0o755)
    os.chown(deps, NOBODY, NOBODY)  # the install runs as nobody
    command = ["-m", "pip", "install", "--no-index", "--find-links", "/wheels", "--target"]
    command += ["/deps", "--disable-pip-version-check", "--no-cache-dir", "--progress-bar"]
    command += ["off", "-r", f"/wheels/{REQUIREMENTS_NAME}"]
    mounts = {
        str(build / "wheels"): {"bind": "/wheels", "mode": "ro"},
        str(deps): {"bind": "/deps", "mode": "rw"},
    }
    # pip unpacks into its temporary directory before it moves into --target: on the build's
    # disk, not a tmpfs that would count against the install's memory.
    scratch = build / "scratch"
    scratch.mkdir(mode=0o755)
    os.chown(scratch, NOBODY, NOBODY)
    mounts[str(scratch)] = {"bind": "/tmp", "mode": "rw"}
    options = sandboxed(image, node_id, command, mounts)
    del options["tmpfs"]
    exit_code, lines = run_in_image(client, options, note, deadline)
    if exit_code != 0:
        raise RequirementsUnmet(f"{REQUIREMENTS_NAME} cannot be met: {reason(lines, exit_code)}")
