"""A running container's CPU time and memory, read from its cgroup.

The cgroup files are read directly (v1, or v2 with either cgroup driver) because that is
cheap enough to sample every poll; ``docker stats`` is the fallback where the cgroup is not
visible (a remote daemon, say), at the price of an API call per sample. Each reading gives
the CPU seconds used so far, the memory in use now and the highest memory use the kernel
saw: the last two are the same file where the kernel keeps no peak (cgroup v2 before 5.19),
and the meter keeps the highest it read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import docker.errors
from docker.models.containers import Container

from hivemind_cluster.agent.usagesamples import UsageSeries

CGROUP_ROOT = Path("/sys/fs/cgroup")


class Counters(NamedTuple):
    cpu_seconds: float  # used since the container started
    memory_bytes: int  # in use now (page cache included, as the memory limit counts it)
    peak_memory_bytes: int  # the highest use so far, where the kernel keeps it


UsageReader = Callable[[], Counters]


def read_number(path: Path) -> int:
    return int(path.read_text().split()[0])


def cgroup_v1_reader(container_id: str) -> UsageReader | None:
    cpu = CGROUP_ROOT / "cpuacct" / "docker" / container_id / "cpuacct.usage"
    memory = CGROUP_ROOT / "memory" / "docker" / container_id
    current, peak = memory / "memory.usage_in_bytes", memory / "memory.max_usage_in_bytes"
    if not (cpu.exists() and current.exists() and peak.exists()):
        return None
    return lambda: Counters(read_number(cpu) / 1e9, read_number(current), read_number(peak))


def cgroup_v2_reader(container_id: str) -> UsageReader | None:
    for group in (
        CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope",  # systemd driver
        CGROUP_ROOT / "docker" / container_id,  # cgroupfs driver
    ):
        if (group / "cpu.stat").exists():
            current = group / "memory.current"
            peak = group / "memory.peak"  # kernel 5.19+; otherwise the highest current we saw
            return lambda: v2_counters(group, current, peak if peak.exists() else current)
    return None


def v2_counters(group: Path, current: Path, peak: Path) -> Counters:
    return Counters(cpu_stat_seconds(group / "cpu.stat"), read_number(current), read_number(peak))


def cpu_stat_seconds(path: Path) -> float:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"no usage_usec in {path}")


def docker_stats_reader(container: Container) -> UsageReader:
    def read() -> Counters:
        stats = container.stats(stream=False, one_shot=True)
        if not isinstance(stats, dict):
            raise ValueError("docker stats did not return a document")
        return stats_counters(stats)

    return read


def stats_counters(stats: dict[str, object]) -> Counters:
    """The counters in a ``docker stats`` document (``max_usage`` is there on cgroup v1
    only: elsewhere the peak is the current use, as for the v2 files without a peak)."""
    memory = stats.get("memory_stats")
    cpu = stats.get("cpu_stats")
    memory = memory if isinstance(memory, dict) else {}
    cpu_usage = cpu.get("cpu_usage", {}) if isinstance(cpu, dict) else {}
    current = int(memory.get("usage") or 0)
    return Counters(
        int(cpu_usage.get("total_usage") or 0) / 1e9,
        current,
        int(memory.get("max_usage") or current),
    )


class UsageMeter:
    """The running container's CPU time and peak memory, sampled; the last values are kept,
    and each reading goes to the attempt's ``series`` (its usage over time)."""

    def __init__(self, container: Container, series: UsageSeries | None = None) -> None:
        self.container = container
        self.series = series
        self.reader: UsageReader | None = None
        self.cpu_seconds = 0.0
        self.peak_memory_bytes = 0

    def sample(self) -> None:
        if self.reader is None:
            container_id = str(self.container.id)
            self.reader = (
                cgroup_v1_reader(container_id)
                or cgroup_v2_reader(container_id)
                or docker_stats_reader(self.container)
            )
        try:
            counters = self.reader()
        except (OSError, ValueError, docker.errors.DockerException):
            return  # the container is gone: keep what we have
        self.cpu_seconds = max(self.cpu_seconds, counters.cpu_seconds)
        self.peak_memory_bytes = max(
            self.peak_memory_bytes, counters.peak_memory_bytes, counters.memory_bytes
        )
        if self.series is not None:
            self.series.reading(self.cpu_seconds, counters.memory_bytes)
