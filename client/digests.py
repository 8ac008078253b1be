"""The CLI's digest cache: what a file or a directory was last time, so that a second
submission of the same data hashes nothing and zips nothing (and, the hub holding it
already, sends nothing).

A file's SHA-256 is remembered under a key made of what changes with its content: its
absolute path, size, mtime_ns, ctime_ns, inode and device. A directory's zip (digest and
size) under a digest of its listing: its absolute path and, for every regular file the zip
would hold, the relative name, size, mode, mtime_ns, ctime_ns and inode. Keys are digests,
so no path is written in clear.

``$XDG_CACHE_HOME/hivemind/digests.json`` (default ``~/.cache/hivemind/``): mode 0600,
written atomically, merged with what another process wrote meanwhile, at most
``MAX_ENTRIES`` (the least recently used go first). It is a cache: an unreadable one is
empty, an unwritable one is not kept, and neither fails a command.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hivemind_cluster.client.progress import QUIET, Bars
from hivemind_cluster.core.errors import HiveMindError, InvalidInput
from hivemind_cluster.core.files import write_private
from hivemind_cluster.model.blobs import check_digest, hash_file
from hivemind_cluster.model.bundles import regular_files

MAX_ENTRIES = 4096
VERSION = 1


@dataclass(frozen=True)
class Known:
    """A blob as the cache knows it: digest and size."""

    digest: str
    size: int


def cache_dir() -> Path:
    """The CLI's cache directory: ``$XDG_CACHE_HOME/hivemind`` (default ``~/.cache/hivemind``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hivemind"


def cache_path() -> Path:
    return cache_dir() / "digests.json"


def _key(kind: str, parts: list[Any]) -> str:
    return f"{kind}:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def file_key(path: Path, found: os.stat_result) -> str:
    identity = [found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino, found.st_dev]
    return _key("file", [str(path), *identity])


class Listing(NamedTuple):
    """A directory as its zip would hold it: the cache key, its files and their bytes."""

    key: str
    files: int
    size: int


def listing_key(directory: Path) -> Listing:
    """The key of a directory's zip, and how many files and bytes it would hold."""
    listing: list[Any] = [str(directory)]
    size = 0
    for path, name in regular_files(directory):
        found = path.lstat()
        size += found.st_size
        listing.append(
            [
                name,
                found.st_size,
                found.st_mode,
                found.st_mtime_ns,
                found.st_ctime_ns,
                found.st_ino,
            ]
        )
    return Listing(_key("dir", listing), len(listing) - 1, size)


class DigestCache:
    def __init__(self, path: Path | None) -> None:
        """``path`` None: remembered for this process only."""
        self.path = path
        self.entries = self._read()
        self.changed = False

    @classmethod
    def default(cls) -> DigestCache:
        try:
            return cls(cache_path())
        except (RuntimeError, KeyError):  # no home directory: remembered for this run only
            return cls(None)

    def _read(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or data.get("version") != VERSION:
            return {}
        return {k: v for k, v in entries.items() if _valid(v)}

    def get(self, key: str) -> Known | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        entry["used"] = time.time()
        self.changed = True
        return Known(entry["digest"], entry["size"])

    def put(self, key: str, known: Known) -> None:
        self.entries[key] = {"digest": known.digest, "size": known.size, "used": time.time()}
        self.changed = True

    def save(self) -> None:
        """Write what changed, over what another process may have written since."""
        if self.path is None or not self.changed:
            return
        merged = self._read() | self.entries
        kept = sorted(merged.items(), key=lambda item: item[1]["used"], reverse=True)
        data = {"version": VERSION, "entries": dict(kept[:MAX_ENTRIES])}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(self.path, json.dumps(data, separators=(",", ":")))
        except OSError:
            return  # not kept: the next run hashes again
        self.entries, self.changed = dict(kept[:MAX_ENTRIES]), False

    def file_digest(self, path: Path, bars: Bars = QUIET, what: str = "") -> Known:
        """The digest of the file at ``path`` (absolute, no symlink): remembered, or hashed
        now (with a bar) and remembered if the file did not change while it was read."""
        try:
            before = path.stat()
            key = file_key(path, before)
            known = self.get(key)
            if known is not None:
                return known
            with bars.meter(f"hashing {what or path.name}", before.st_size) as meter:
                hashed = hash_file(path, meter.advance)
            after = path.stat()
        except OSError as exc:
            raise HiveMindError(f"cannot read {path}: {exc.strerror or exc}") from None
        if file_key(path, after) != key or hashed.size != before.st_size:
            raise InvalidInput(f"{path} changed while it was read: run the command again")
        known = Known(hashed.digest, hashed.size)
        self.put(key, known)
        return known


def _valid(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    digest, size, used = entry.get("digest"), entry.get("size"), entry.get("used")
    try:
        check_digest(str(digest))
    except InvalidInput:
        return False
    return isinstance(size, int) and size >= 0 and isinstance(used, int | float)
