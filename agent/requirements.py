"""A task's ``requirements.txt``, installed without giving the task network, and the cache of
installs shared by every task on this worker.

A bundle with a top-level ``requirements.txt`` gets its requirements as a directory mounted
read-only at ``/deps`` and added to ``PYTHONPATH``. agent/wheels.py builds that directory
(wheels only, downloaded by the worker, installed in a container with no network); this
module decides when to build it and keeps what was built.

The cache holds one entry per (image id, index, requirements): a later task with the same
image and requirements starts at once. An entry is built in a ``.build-*`` directory and
renamed into place only when whole, so a failed or interrupted install leaves nothing behind.
The cache is bounded: past ``max_bytes``, the entries used longest ago that no running task
holds are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from packaging.requirements import InvalidRequirement, Requirement

from hivemind_cluster.agent.taskrun import TaskRun
from hivemind_cluster.agent.wheels import (
    REQUIREMENTS_NAME,
    Deadline,
    Note,
    RequirementsUnmet,
    download,
    install,
    probe_tags,
)
from hivemind_cluster.core.console import one_line
from hivemind_cluster.core.units import MIB, format_bytes
from hivemind_cluster.model.bundles import Source, open_zip

DEFAULT_CACHE_BYTES = 4096 * MIB
MAX_REQUIREMENTS_BYTES = 64 * 1024
DEPS_MOUNT = "/deps"
BUILDING = ".build-"
# pip's comment rule: ``#`` at the start of a line or after whitespace.
COMMENT = re.compile(r"(^|\s)#.*$")

__all__ = ["DEFAULT_CACHE_BYTES", "Deps", "Requirements", "RequirementsUnmet", "wanted_by"]


@dataclass(frozen=True)
class Deps:
    """What a task gets of its requirements: a directory to mount, or none."""

    path: Path | None = None

    def mounts(self) -> dict[str, dict[str, str]]:
        return {str(self.path): {"bind": DEPS_MOUNT, "mode": "ro"}} if self.path else {}

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with ``/deps`` after whatever the task put on PYTHONPATH."""
        if not self.path:
            return env
        existing = env.get("PYTHONPATH", "")
        return {**env, "PYTHONPATH": f"{existing}:{DEPS_MOUNT}" if existing else DEPS_MOUNT}


NO_DEPS = Deps()


def wanted_by(bundle: Source | None) -> list[str]:
    """The requirements a bundle's top-level ``requirements.txt`` names ([] without one).

    Only requirements by name and version are accepted: an option line (``-r``, ``-e``,
    ``--index-url``, ``--find-links`` …) or a URL or path would have the worker's pip read
    the worker's files or reach hosts the worker chose not to trust.
    """
    if not bundle:
        return []
    with open_zip(bundle) as archive:
        try:
            info = archive.getinfo(REQUIREMENTS_NAME)
        except KeyError:
            return []
        if info.file_size > MAX_REQUIREMENTS_BYTES:
            raise RequirementsUnmet(f"{REQUIREMENTS_NAME} is larger than 64 KiB")
        text = archive.read(info)
    try:
        lines = text.decode().splitlines()
    except UnicodeDecodeError:
        raise RequirementsUnmet(f"{REQUIREMENTS_NAME} is not UTF-8 text") from None
    return [checked(number, line) for number, line in enumerate(lines, 1) if uncommented(line)]


def uncommented(line: str) -> str:
    return COMMENT.sub("", line).strip()


def checked(number: int, line: str) -> str:
    text = uncommented(line)
    where = f"{REQUIREMENTS_NAME} line {number}"
    if text.startswith("-") or text.endswith("\\"):
        raise RequirementsUnmet(
            f"{where}: options are not supported here, only requirements by name ({text!r})"
        )
    try:
        requirement = Requirement(text)
    except InvalidRequirement as error:
        first_line = str(error).splitlines()[0] if str(error) else "not a requirement"
        raise RequirementsUnmet(f"{where}: {one_line(first_line)} ({text!r})") from None
    if requirement.url:
        raise RequirementsUnmet(
            f"{where}: a URL or path cannot be installed; name the package and its version"
        )
    return str(requirement)


def counted(wanted: list[str]) -> str:
    return f"{len(wanted)} requirement" + ("s" if len(wanted) != 1 else "")


def cache_key(image_id: str, index_url: str, wanted: list[str]) -> str:
    """``<image>-<digest of the index and requirements>``: a name that is safe as a path."""
    digest = hashlib.sha256("\n".join([index_url, *wanted]).encode()).hexdigest()
    return f"{image_id.removeprefix('sha256:')[:16]}-{digest[:24]}"


class Requirements:
    """Installs tasks' requirements and keeps the installs (one per agent, shared by tasks)."""

    def __init__(self, root: Path, index_url: str = "", max_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = root
        self.index_url = index_url
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.in_use: Counter[str] = Counter()
        self.builds: dict[str, threading.Lock] = {}
        self.sizes: dict[str, int] = {}  # of entries already measured
        self.evicting = threading.Lock()

    def remove_leftovers(self) -> None:
        """Remove half-built entries left by a crashed agent (call before any task runs)."""
        if self.root.is_dir():
            for entry in self.root.glob(f"{BUILDING}*"):
                shutil.rmtree(entry, ignore_errors=True)

    @contextlib.contextmanager
    def held(
        self,
        client: docker.DockerClient,
        node_id: str,
        task: TaskRun,
        note: Note,
        cancel: threading.Event,
    ) -> Iterator[Deps]:
        """The task's requirements, installed (or found in the cache) and held for as long as
        the task runs; raises RequirementsUnmet, or a Docker error when the daemon fails."""
        wanted = wanted_by(task.bundle)
        if not wanted:
            yield NO_DEPS
            return
        key = cache_key(str(client.images.get(task.image).id), self.index_url, wanted)
        entry = self.root / key
        with self.lock:  # held from before it is looked for: eviction cannot take it from here
            self.in_use[key] += 1
        try:
            with self.build_lock(key):
                if entry.is_dir():
                    note(f"{REQUIREMENTS_NAME}: {counted(wanted)} from the cache ({key})")
                    os.utime(entry)  # its last use, for the LRU
                else:
                    deadline = Deadline(cancel, task.timeout_seconds)
                    self.build(client, node_id, task, wanted, entry, note, deadline)
            self.evict()
            yield Deps(entry)
        finally:
            with self.lock:
                self.in_use[key] -= 1

    def build_lock(self, key: str) -> threading.Lock:
        """One build per entry at a time: a second task with the same requirements waits for
        the first one's install and then finds it in the cache."""
        with self.lock:
            return self.builds.setdefault(key, threading.Lock())

    def build(
        self,
        client: docker.DockerClient,
        node_id: str,
        task: TaskRun,
        wanted: list[str],
        entry: Path,
        note: Note,
        deadline: Deadline,
    ) -> None:
        source = self.index_url or "pip's configuration on this worker"
        note(f"{REQUIREMENTS_NAME}: downloading wheels for {counted(wanted)} ({source})")
        started = time.monotonic()
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        building = self.root / f"{BUILDING}{secrets.token_hex(4)}"
        try:
            (building / "wheels").mkdir(mode=0o755, parents=True)
            (building / "wheels" / REQUIREMENTS_NAME).write_text("\n".join(wanted) + "\n")
            (building / "wheels" / REQUIREMENTS_NAME).chmod(0o644)
            download(
                building / "wheels",
                probe_tags(client, task.image, node_id, deadline),
                self.index_url,
                note,
                deadline,
            )
            note(f"{REQUIREMENTS_NAME}: installing in {task.image} with no network")
            install(client, task.image, node_id, building, note, deadline)
            os.rename(building / "deps", entry)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        self.sizes[entry.name] = tree_bytes(entry)
        size = format_bytes(self.sizes[entry.name])
        took = time.monotonic() - started
        note(f"{REQUIREMENTS_NAME}: installed {size} in {took:.1f}s, cached for later tasks")

    def evict(self) -> None:
        """Remove the entries used longest ago, none that a task holds, until the cache fits."""
        with self.evicting:  # one at a time: only eviction removes entries
            self.evict_now()

    def evict_now(self) -> None:
        entries = [e for e in self.root.iterdir() if e.is_dir() and not e.name.startswith(".")]
        entries.sort(key=lambda entry: entry.stat().st_mtime)
        for entry in entries:
            if entry.name not in self.sizes:
                self.sizes[entry.name] = tree_bytes(entry)
        total = sum(self.sizes[entry.name] for entry in entries)
        for entry in entries:
            if total <= self.max_bytes:
                return
            with self.lock:
                if self.in_use[entry.name]:
                    continue
                doomed = self.root / f"{BUILDING}evicted-{secrets.token_hex(4)}"
                os.rename(entry, doomed)  # gone from the cache at once, whole
            shutil.rmtree(doomed, ignore_errors=True)
            total -= self.sizes.pop(entry.name)


def tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root``."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total
