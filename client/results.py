"""A task's result on the user's disk: downloaded next to where it goes (a ``.part`` file,
resumed if one is there from before), verified against the task's ``output_digest``, then
unpacked into a directory, all or nothing, or kept as a zip file. The disk's free space is
checked before the download and before unpacking (a result unpacks to up to 64 GiB).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from hivemind_cluster.client.progress import QUIET, Bars
from hivemind_cluster.client.taskclient import TaskClient
from hivemind_cluster.client.transfer import download_result
from hivemind_cluster.core.errors import Conflict, HiveMindError, InvalidInput, TooLarge
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.bundles import (
    RESULT_RULES,
    Source,
    check_bundle,
    current_umask,
    unpack_bundle,
    unpacked_size,
)
from hivemind_cluster.model.states import FINAL_STATES


def part_path(directory: Path, task_id: str) -> Path:
    return directory / f".hivemind-result-{re.sub(r'[^A-Za-z0-9_.-]', '_', task_id)}.zip.part"


def fetch_result(
    client: TaskClient, task_id: str, target: Path, kept: Path | None, bars: Bars = QUIET
) -> list[str]:
    """The names of the result's files, unpacked into ``target`` or, with ``kept``, the zip
    saved as that new file (in ``target``, its directory); [] when the task wrote nothing."""
    task = client.get(task_id)
    if task["status"] not in FINAL_STATES:
        raise Conflict(f"task {task['id']} is {task['status']}: no result yet")
    if kept is not None and (kept.exists() or kept.is_symlink()):
        raise InvalidInput(f"{kept} exists: give --zip a new file")
    digest: str = task.get("output_digest") or ""
    if not digest:
        return []
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HiveMindError(f"cannot write the result to {target}: {exc.strerror}") from None
    part = part_path(target, task["id"])
    check_room(target, task["output_bytes"] - part_size(part), f"the result zip of {task['id']}")
    download_result(client, task["id"], digest, task["output_bytes"], part, bars)
    return keep_zip(part, kept) if kept is not None else unpack_result(part, target)


def part_size(part: Path) -> int:
    """The bytes a part from before holds already (download_result checks what it is)."""
    try:
        return part.lstat().st_size
    except OSError:
        return 0


def check_room(directory: Path, needed: int, what: str, hint: str = "") -> None:
    """Refuse, before writing anything, what would fill the disk of ``directory``: results
    unpack to up to 64 GiB, and a disk filled halfway is worse than a clear refusal."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise HiveMindError(f"cannot write the result to {directory}: {exc.strerror}") from None
    if needed > free:
        raise TooLarge(
            f"{what} needs {format_bytes(needed)} but {directory} has {format_bytes(free)} "
            f"free: free some space or give another directory{hint}"
        )


def keep_zip(part: Path, kept: Path) -> list[str]:
    names = check_bundle(part, RESULT_RULES)
    try:
        os.replace(part, kept)
    except OSError as exc:
        raise HiveMindError(f"cannot write {kept}: {exc.strerror}") from None
    return names


def unpack_result(part: Path, target: Path) -> list[str]:
    """The downloaded zip unpacked (``save_result``), then removed, unpacked or not; kept
    when the disk has no room to unpack it (for ``--zip``, or a run with more room)."""
    try:
        needed = unpacked_size(part, RESULT_RULES)
    except BaseException:
        part.unlink(missing_ok=True)  # not a result zip: of no use to --zip either
        raise
    hint = f", or keep the zip with --zip FILE (downloaded: {part})"
    check_room(target, needed, "unpacking the result", hint)
    try:
        return save_result(part, target)
    finally:
        part.unlink(missing_ok=True)


def save_result(bundle: Source, target: Path) -> list[str]:
    """Unpack an output zip (in memory or in a file) into ``target``, all or nothing,
    never over existing files.

    It is unpacked next to ``target`` first (the bundle is checked entry by entry there),
    then its top-level entries are moved in; a name already in ``target`` stops it before
    anything is moved. Modes follow the user's umask, like any file they create.
    """
    names = check_bundle(bundle, RESULT_RULES)
    tops = sorted({name.split("/", 1)[0] for name in names})
    try:
        target.mkdir(parents=True, exist_ok=True)
        taken = [name for name in tops if (target / name).exists() or (target / name).is_symlink()]
        if taken:
            raise InvalidInput(
                f"{target} already has {taken[0]!r}: give -o an empty or new directory"
            )
        staging = Path(tempfile.mkdtemp(prefix=".hivemind-result-", dir=target))
        try:
            unpack_bundle(bundle, staging, RESULT_RULES, umask=current_umask())
            for name in tops:
                os.replace(staging / name, target / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise HiveMindError(f"cannot write the result to {target}: {exc.strerror or exc}") from None
    return names
