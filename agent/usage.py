"""A running container's CPU time and peak memory, read from its cgroup.

The cgroup files are read directly (v1, or v2 with either cgroup driver) because that is
cheap enough to sample every poll; ``docker stats`` is the fallback where the cgroup is not
visible (a remote daemon, say), at the price of an API call per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker.errors
from docker.models.containers import Container

CGROUP_ROOT = Path("/sys/fs/cgroup")

UsageReader = Callable[[], tuple[float, int]]


def read_number(path: Path) -> int:
    return int(path.read_text().split()[0])


def cgroup_v1_reader(container_id: str) -> UsageReader | None:
    cpu = CGROUP_ROOT / "cpuacct" / "docker" / container_id / "cpuacct.usage"
    memory = CGROUP_ROOT / "memory" / "docker" / container_id / "memory.max_usage_in_bytes"
    if not (cpu.exists() and memory.exists()):
        return None
    return lambda: (read_number(cpu) / 1e9, read_number(memory))


def cgroup_v2_reader(container_id: str) -> UsageReader | None:
    for group in (
        CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope",  # systemd driver
        CGROUP_ROOT / "docker" / container_id,  # cgroupfs driver
    ):
        if (group / "cpu.stat").exists():
            peak = group / "memory.peak"  # kernel 5.19+; otherwise the highest current we saw
            memory = peak if peak.exists() else group / "memory.current"
            return lambda: (cpu_stat_seconds(group / "cpu.stat"), read_number(memory))
    return None


def cpu_stat_seconds(path: Path) -> float:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"no usage_usec in {path}")


def docker_stats_reader(container: Container) -> UsageReader:
    def read() -> tuple[float, int]:
        stats = container.stats(stream=False, one_shot=True)
        if not isinstance(stats, dict):
            raise ValueError("docker stats did not return a document")
        memory = stats.get("memory_stats", {})
        cpu_ns = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0)
        return cpu_ns / 1e9, int(memory.get("max_usage") or memory.get("usage") or 0)

    return read


class UsageMeter:
    """The running container's CPU time and peak memory, sampled; the last values are kept."""

    def __init__(self, container: Container) -> None:
        self.container = container
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
            cpu_seconds, memory_bytes = self.reader()
        except (OSError, ValueError, docker.errors.DockerException):
            return  # the container is gone: keep what we have
        self.cpu_seconds = max(self.cpu_seconds, cpu_seconds)
        self.peak_memory_bytes = max(self.peak_memory_bytes, memory_bytes)
