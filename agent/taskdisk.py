"""A task's own disk: a filesystem of exactly its disk limit, holding its working copy, ``/out``
and ``/tmp``.

A file of exactly the limit, allocated up front, formatted ext4, attached to a loop device and
mounted in the task directory: whatever the task writes lands in that file, which cannot grow,
so a task that writes too much gets ENOSPC inside its own filesystem; and since the space was
reserved when the task started, tasks side by side cannot fill the worker's disk either.
``task_disk`` unmounts it, frees its loop device and deletes the file however the task ends;
``unmount_leftovers`` does the same for the disks of an agent that crashed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hivemind_cluster.agent.taskrun import OnOutput
from hivemind_cluster.core.console import one_line
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.units import MIB, format_bytes

DEFAULT_DISK_BYTES = 1024 * MIB  # a run that names no limit (an older pool)
MIN_DISK_BYTES = 16 * MIB  # ext4 needs a few MiB of its own
# Free space below this at the end means the task filled its disk (ext4 keeps a few blocks).
FULL_BELOW_BYTES = 256 * 1024
DISK_FULL_MARKERS = (b"No space left on device", b"ENOSPC", b"Disk quota exceeded")
# No blocks reserved for root, no journal (nothing on it outlives the task), no room kept for
# growing it: as much of the limit as ext4 allows is the task's (about 94% at 64 MiB, 98% at
# 1 GiB).
# (No discard either: it would hand the reserved blocks back to the host.)
MKFS_OPTIONS = ("-m", "0", "-O", "^has_journal,^resize_inode", "-E", "root_owner=0:0,nodiscard")
IMAGE_NAME = "disk.img"
MOUNT_NAME = "fs"
DOCKER_PID_FILE = "/var/run/docker.pid"
# A propagating mount namespace can show one mount twice at the same place: unmount that often.
MAX_STACKED_MOUNTS = 4


def run_tool(*command: str) -> None:
    """Run a filesystem tool; its failure is the worker's, not the task's."""
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        stderr = getattr(error, "stderr", b"") or b""
        why = stderr.decode(errors="replace").strip() or str(error)
        raise SystemFailure(f"{command[0]} failed: {one_line(why)}") from error


@contextlib.contextmanager
def task_disk(task_dir: Path, size_bytes: int) -> Iterator[Path]:
    """A fresh ext4 filesystem of ``size_bytes`` mounted at ``task_dir/fs``, for the block.

    Refuses (SystemFailure, so that the pool retries elsewhere) when this worker's disk has
    less free space than the limit: the limit must be a promise the worker can keep.
    """
    size_bytes = max(size_bytes or DEFAULT_DISK_BYTES, MIN_DISK_BYTES)
    shutil.rmtree(task_dir, ignore_errors=True)
    task_dir.mkdir(parents=True)
    free = shutil.disk_usage(task_dir).free
    if free < size_bytes:
        raise SystemFailure(
            f"this worker has {format_bytes(free)} of free disk, "
            f"less than the task's limit of {format_bytes(size_bytes)}"
        )
    image, root = task_dir / IMAGE_NAME, task_dir / MOUNT_NAME
    root.mkdir()
    try:
        reserve(image, size_bytes)
        run_tool("mkfs.ext4", "-q", "-F", *MKFS_OPTIONS, str(image))
        device = attach(image)
        for namespace in mount_namespaces():
            run_tool(*namespace, "mount", "-o", "nosuid,nodev", device, str(root))
        yield root
    finally:
        release(image, root)


def reserve(image: Path, size_bytes: int) -> None:
    """Allocate the whole image up front (unwritten extents: instant on ext4 and xfs), so that
    tasks running side by side can never together promise more disk than the worker has."""
    descriptor = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(descriptor, 0, size_bytes)
    except OSError as error:
        raise SystemFailure(
            f"could not reserve {format_bytes(size_bytes)} of disk for the task: {error.strerror}"
        ) from error
    finally:
        os.close(descriptor)


def attach(image: Path) -> str:
    """A loop device of the image (``/dev/loopN``: devices are seen from every namespace)."""
    try:
        found = subprocess.run(
            ["losetup", "--find", "--show", str(image)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise SystemFailure(f"losetup failed: {one_line(str(error))}") from error
    return found.stdout.strip()


def mount_namespaces() -> list[tuple[str, ...]]:
    """Where the task's disk is mounted: here, for the agent to fill and read it, and, when
    Docker's daemon resolves bind mounts in another mount namespace (an agent started in a
    network namespace by ``ip netns exec`` has one of its own), there too, through
    ``nsenter``. Both mounts of the one loop device share one filesystem."""
    ours: list[tuple[str, ...]] = [()]
    try:
        pid = int(Path(DOCKER_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = 1
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            return ours
    except OSError:
        return ours
    return [*ours, ("nsenter", f"--mount=/proc/{pid}/ns/mnt", "--")]


def release(image: Path, root: Path) -> None:
    """Unmount the disk wherever it is mounted, free its loop device, delete its image. A
    mount still busy is detached lazily rather than left behind."""
    for namespace in reversed(mount_namespaces()):
        for _ in range(MAX_STACKED_MOUNTS):
            if not namespace and not os.path.ismount(root):
                break
            try:
                run_tool(*namespace, "umount", str(root))
            except SystemFailure:
                if namespace:
                    break  # no (more) mount there
                run_tool("umount", "--lazy", str(root))
    if image.exists():
        listed = subprocess.run(
            ["losetup", "--noheadings", "--output", "NAME", "--associated", str(image)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for device in listed.stdout.split():
            run_tool("losetup", "--detach", device)
    image.unlink(missing_ok=True)


def unmount_leftovers(work_root: Path) -> None:
    """Release every task disk under ``work_root`` (an agent that crashed left them)."""
    if work_root.is_dir():
        for root in sorted(work_root.glob(f"*/{MOUNT_NAME}")):
            release(root.parent / IMAGE_NAME, root)


def disk_is_full(root: Path) -> bool:
    stats = os.statvfs(root)
    return stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES


class DiskFullWatch:
    """Passes a task's output on and notes whether its stderr said the disk was full.

    Keeps the tail of the previous chunk so that a message split across two chunks is seen.
    """

    def __init__(self, on_output: OnOutput) -> None:
        self.on_output = on_output
        self.tail = b""
        self.seen = False

    def __call__(self, stream: str, data: bytes) -> None:
        if stream == "stderr" and not self.seen:
            window = self.tail + data
            self.seen = any(marker in window for marker in DISK_FULL_MARKERS)
            self.tail = window[-64:]
        self.on_output(stream, data)


def limit_shown(size_bytes: int) -> str:
    """The size of the disk a run asking for ``size_bytes`` gets, for a message."""
    return format_bytes(max(size_bytes or DEFAULT_DISK_BYTES, MIN_DISK_BYTES), exact=True)


def disk_limit_error(size_bytes: int) -> str:
    return f"disk limit exceeded (limit {limit_shown(size_bytes)})"
