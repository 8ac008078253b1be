"""What of a task's writable working copy comes back: the files it created or changed.

The bundle is unpacked into the task's working directory (``/work``) and a snapshot taken
(size, modification time and SHA-256 of every file); when the task ends, a file that is new or
differs from its snapshot is returned, an unchanged input file is not. In the one result zip,
``/out`` files sit at the top as they always have, and working-directory files at their path
relative to ``/work`` (``/work/output/result.json`` is ``output/result.json``); where both hold
the same path (or one's path is the other's folder), the ``/out`` file wins and the working
copy's is left out, so names in the zip never collide. Python's ``__pycache__`` folders are
not returned.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from hivemind_cluster.model.bundles import CHUNK, pack_files, regular_files

# name -> (size, modification time in ns, SHA-256 hex)
Snapshot = dict[str, tuple[int, int, str]]
PYCACHE = "__pycache__"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(work: Path) -> Snapshot:
    """Every regular file of the freshly unpacked working copy, as it was handed to the task."""
    taken: Snapshot = {}
    for path, name in regular_files(work):
        stats = path.lstat()
        taken[name] = (stats.st_size, stats.st_mtime_ns, file_digest(path))
    return taken


def changed_files(work: Path, before: Snapshot) -> Iterator[tuple[Path, str]]:
    """(path, name) of each file the task created or changed in its working copy.

    Size or time differing settles it; equal ones are compared by content, so a file rewritten
    with its old time kept still counts as changed.
    """
    for path, name in regular_files(work):
        if PYCACHE in name.split("/"):
            continue  # Python's own bytecode cache of the bundle's modules, not a result
        was = before.get(name)
        stats = path.lstat()
        if (  # hashed only when size and time look unchanged
            was is None
            or (stats.st_size, stats.st_mtime_ns) != was[:2]
            or file_digest(path) != was[2]
        ):
            yield path, name


def folders_of(name: str) -> set[str]:
    parts = name.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def result_files(out: Path, work: Path, before: Snapshot) -> Iterator[tuple[Path, str]]:
    """The result zip's members: ``/out`` at the top, then the working copy's changes that
    would not give two entries one path (the same name, or a file where the other has a
    folder)."""
    taken: set[str] = set()
    folders: set[str] = set()
    for path, name in regular_files(out):
        taken.add(name)
        folders |= folders_of(name)
        yield path, name
    for path, name in changed_files(work, before):
        if name not in taken and name not in folders and not folders_of(name) & taken:
            yield path, name


def pack_result(out: Path, work: Path, before: Snapshot, dest: Path) -> int:
    """The result zip, written to the new file ``dest``: its size (0, and no file, when
    nothing was written); InvalidInput when it is over the limits."""
    return pack_files(result_files(out, work, before), dest)
