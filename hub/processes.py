"""Processes the hub starts, as a later ``up`` can recognise them after the hub crashed.

A pid alone names nothing once its process is gone (pids are reused), so a child is
recorded with its start time (clock ticks since boot, ``/proc/PID/stat``), its executable
and the boot it ran in: only a process matching all of them is the one the hub started,
and only that one is ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@cache
def current_boot() -> str:
    """This boot's id (read once: it cannot change while we run): a record from an earlier
    boot names no living process."""
    return BOOT_ID.read_text().strip()


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name (field 2) may hold spaces and parentheses: fields resume after the last ")".
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def executable(name: str) -> str:
    """The file ``/proc/PID/exe`` of a process running ``name`` points to."""
    found = shutil.which(name)
    return os.path.realpath(found) if found else name


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    started: int
    exe: str
    boot: str

    @classmethod
    def of(cls, pid: int, exe: str) -> ProcessIdentity | None:
        """The identity of the running ``pid`` (``exe`` as ``executable`` gives it)."""
        started = start_time(pid)
        return None if started is None else cls(pid, started, exe, current_boot())

    @classmethod
    def from_json(cls, data: Any) -> ProcessIdentity | None:
        try:
            return cls(int(data["pid"]), int(data["started"]), str(data["exe"]), str(data["boot"]))
        except (TypeError, KeyError, ValueError):
            return None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def is_running(self) -> bool:
        """Whether this very process still runs (not another one that got its pid)."""
        if self.boot != current_boot() or start_time(self.pid) != self.started:
            return False
        try:
            exe = os.readlink(f"/proc/{self.pid}/exe")
        except OSError:
            return False  # a zombie, or gone meanwhile
        return exe.removesuffix(" (deleted)") == self.exe

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL once ``timeout`` has passed; only while it is this process."""
        for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not self.is_running():
                return
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)


def dies_with_parent(command: list[str]) -> list[str]:
    """``command`` run so that it gets SIGTERM when the thread that starts it dies
    (``setpriv --pdeathsig``, util-linux), so a killed hub takes its children along; as it
    is where setpriv is missing (the next ``up`` reclaims them then). Start it from a
    thread that lives as long as the hub (the event loop's), never from a worker thread.
    """
    if shutil.which("setpriv") is None:
        return command
    return ["setpriv", "--pdeathsig", "TERM", "--", *command]
