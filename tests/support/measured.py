"""Measuring what lab hosts do (tests/support/bigdata.py, bench/transfer.py): the peak RSS
and CPU time of their processes, found by command line in a host's namespace, the bytes
through their WireGuard interfaces, and commands run to their end with their exact peak RSS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.hostprocesses import pids_matching
from tests.support.lab import Host


@dataclass(frozen=True)
class Counters:
    """Bytes through a host's WireGuard interface (its plaintext side: what the overlay
    carried, TCP/IP headers and retransmissions included)."""

    rx: int
    tx: int

    def __sub__(self, earlier: Counters) -> Counters:
        return Counters(self.rx - earlier.rx, self.tx - earlier.tx)


def interface_counters(host: Host) -> Counters:
    statistics = f"/sys/class/net/{host.wg_interface}/statistics"
    shown = host.run("cat", f"{statistics}/rx_bytes", f"{statistics}/tx_bytes").stdout.split()
    return Counters(int(shown[0]), int(shown[1]))


# --- the processes being measured ----------------------------------------------------------


def service_pids(host: Host, command_line: str) -> Callable[[], list[int]]:
    """A finder of ``host``'s processes whose command line contains ``command_line``."""
    return lambda: pids_matching(host, command_line)


def rss_of(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def cpu_seconds(finders: dict[str, Callable[[], list[int]]]) -> dict[str, float]:
    """Each name's processes' CPU time so far (user and system, with the children they
    waited for: an agent's ``wg`` and ``nft`` runs): take it before and after a transfer
    to see what the transfer cost, and where."""
    spent = {}
    for name, finder in finders.items():
        total = 0.0
        for pid in finder():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system + times.children_user
                total += times.children_system
        spent[name] = total
    return spent


def high_water_mark(pid: int) -> int:
    """The process's peak RSS since it started (VmHWM), 0 once it is gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class PeakRss:
    """Samples the RSS of named processes in a thread (every ``period`` s) while in ``with``;
    ``peaks`` holds each name's largest total RSS seen, ``marks`` each one's VmHWM at the
    end (the peak between samples too, but since the process started)."""

    finders: dict[str, Callable[[], list[int]]]
    period: float = 0.05
    peaks: dict[str, int] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        for name, finder in self.finders.items():
            self.peaks[name] = max(self.peaks.get(name, 0), rss_of(finder()))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        for name, finder in self.finders.items():
            self.marks[name] = max((high_water_mark(pid) for pid in finder()), default=0)


class Sampled:
    """``probe()`` every ``period`` s in a thread while in ``with``: ``values`` (those > 0,
    e.g. the sizes of a partial file while it exists)."""

    def __init__(self, probe: Callable[[], int], period: float = 0.05) -> None:
        self.probe = probe
        self.period = period
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampled", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if (value := self.probe()) > 0:
                self.values.append(value)

    def __enter__(self) -> Sampled:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settled_size(probe: Callable[[], int], quiet: float = 1.0, seconds: float = 30) -> int:
    """``probe()`` once it has not changed for ``quiet`` s (a writer that lost its peer
    finishing its last chunk), at most ``seconds`` on."""
    deadline = time.monotonic() + seconds
    last = probe()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        if (now := probe()) == last:
            break
        last = now
    return last


@dataclass(frozen=True)
class Finished:
    """A command run to its end in a host's namespace, with its exact peak RSS (from
    ``wait4``: ``ip netns exec`` execs the command in place, so the child is the command)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int
    cpu_seconds: float

    def json(self) -> Any:
        if self.returncode != 0:
            raise AssertionError(f"exited {self.returncode}\n{self.stdout}\n{self.stderr}")
        return json.loads(self.stdout)


class Running:
    """A command started in a host's namespace, its output going to temporary files."""

    def __init__(self, host: Host, argv: Sequence[str], env: dict[str, str] | None) -> None:
        self.stdout = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in finish)
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            host.command(argv), stdout=self.stdout, stderr=self.stderr, env=env, text=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)

    def finish(self, timeout: float = 600) -> Finished:
        """Wait for the command (killing it after ``timeout``) and collect what it left."""
        killer = threading.Timer(timeout, self.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(self.process.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)
        outputs = []
        for stream in (self.stdout, self.stderr):
            stream.seek(0)
            outputs.append(stream.read())
            stream.close()
        return Finished(
            self.process.returncode,
            outputs[0],
            outputs[1],
            seconds,
            usage.ru_maxrss * 1024,
            usage.ru_utime + usage.ru_stime,
        )


def run_measured(
    host: Host, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600
) -> Finished:
    return Running(host, argv, env).finish(timeout)
