"""The audit log (core/audit.py) while the hub runs: its settings changes recorded at
``up``, and the log mirrored to ``<state dir>/audit.log``.

The mirror is a second copy outside Redis: JSON lines, one entry each, in chain order,
appended every MIRROR_INTERVAL seconds and once more as the hub stops. After a restart it
resumes after the last seq in the file (a line cut short by a crash is dropped and copied
again), so the file never holds an entry twice nor misses one Redis still has. Entries
removed from Redis after they were mirrored stay in the file: that is what it is for.

Settings: at each ``up`` the hub's settings (``HubSettings`` as a dict) are compared with
those the ``settings.change`` entries recorded so far (each holds the keys that changed,
with their new values, as JSON; the first holds them all), and the keys that differ are
recorded in one new entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import redis

from hivemind_cluster.core import names
from hivemind_cluster.core.audit import (
    HUB_ADMIN,
    LOCAL,
    AuditLog,
    Entry,
    Event,
    canonical,
    entry_of,
)
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.supervisor import repeat_until_undone

log = logging.getLogger(__name__)
MIRROR_INTERVAL = 1.0  # seconds between two copies of new entries to the file
TAIL_BYTES = 64 * 1024  # read from the file's end to find its last entry (entries are smaller)
SETTINGS_TARGET = names.HUB_CONFIG


def start_audit(settings: HubSettings, db: redis.Redis, undo: contextlib.AsyncExitStack) -> None:
    """Record what changed in the settings since the last ``up``, then mirror the log to
    the state directory until the hub stops (a task cancelled on ``undo``)."""
    audit = AuditLog(db)
    record_settings_changes(audit, settings)
    mirror = Mirror(settings.path / names.AUDIT_LOG, audit)

    async def copy_the_rest() -> None:
        """What came in since the last copy (Redis still runs: it stops after this)."""
        try:
            await asyncio.to_thread(mirror.copy_new)
        except Exception:
            log.exception("mirroring the audit log's last entries failed")

    undo.push_async_callback(copy_the_rest)  # after the copier below is cancelled
    copy = functools.partial(asyncio.to_thread, mirror.copy_new)
    repeat_until_undone(
        undo, "audit-mirror", MIRROR_INTERVAL, copy, "mirroring the audit log failed"
    )


def settings_as_recorded(entries: list[Entry]) -> dict[str, Any]:
    """The settings the ``settings.change`` entries add up to (unreadable ones skipped)."""
    recorded: dict[str, Any] = {}
    for entry in entries:
        try:
            changed = json.loads(entry.detail)
        except ValueError:
            continue
        if isinstance(changed, dict):
            recorded.update(changed)
    return recorded


def record_settings_changes(audit: AuditLog, settings: HubSettings) -> Entry | None:
    """One ``settings.change`` entry with the keys that differ from the recorded ones."""
    recorded = settings_as_recorded(audit.entries(action="settings.change"))
    current = dataclasses.asdict(settings)
    changed = {k: v for k, v in current.items() if k not in recorded or recorded[k] != v}
    if not changed:
        return None
    event = Event(HUB_ADMIN, LOCAL, "settings.change", SETTINGS_TARGET, detail=canonical(changed))
    return audit.record(event)


class Mirror:
    """``audit.log``: the entries of Redis's log, each once, in chain order."""

    def __init__(self, path: Path, audit: AuditLog) -> None:
        self.path = path
        self.audit = audit
        self.last_seq = self.resume()
        self.warned_behind = False
        # One copy at a time: a copy's thread runs on when the task awaiting it is cancelled.
        self.copying = threading.Lock()

    def resume(self) -> int:
        """The last seq in the file (0 for none); a last line cut short is cut off."""
        if not self.path.exists():
            return 0
        with self.path.open("rb+") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_BYTES)
            file.seek(start)
            tail = file.read()
            whole = tail.rfind(b"\n") + 1  # the end of the last complete line in the tail
            if start + whole < size:
                file.truncate(start + whole)
            lines = tail[:whole].splitlines()
        for line in reversed(lines):
            try:
                return entry_of(line.decode()).seq
            except (ValueError, UnicodeDecodeError):
                continue
        return 0

    def copy_new(self) -> int:
        """Append the entries after ``last_seq``; how many were appended."""
        with self.copying:
            return self._copy_new()

    def _copy_new(self) -> int:
        head_seq, _ = self.audit.head()
        if head_seq < self.last_seq:
            if not self.warned_behind:
                log.error(
                    "the audit log in Redis ends at entry %d, its mirror at %d: entries were "
                    "removed from Redis (the mirror keeps them, and waits)",
                    *(head_seq, self.last_seq),
                )
                self.warned_behind = True
            return 0
        # Entry n is at index n - 1 unless entries were removed: with k gone (the head
        # counts more than the list holds) it is at n - 1 - k, so reading starts k earlier
        # (the seqs below skip what the mirror already has).
        removed = max(0, head_seq - self.audit.length())
        new: list[tuple[int, str]] = []
        for line in self.audit.lines(max(0, self.last_seq - removed)):
            try:
                seq = entry_of(line).seq
            except ValueError:
                continue  # altered beyond reading: verify names it
            if seq > (new[-1][0] if new else self.last_seq):
                new.append((seq, line))
        if not new:
            return 0
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a") as file:
            file.write("".join(line + "\n" for _, line in new))
            file.flush()
            os.fsync(file.fileno())
        self.last_seq = new[-1][0]
        return len(new)
