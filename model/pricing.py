"""The rate card: what a task's price cap is, and what its measured usage costs.

All prices are integers of micro-CPT: per CPU-second, per GB-second of memory (GB = 10^9
bytes) and per GPU-second. Usage arrives as seconds and bytes; it is turned into integer
microseconds once, and every sum is rounded up to a whole micro-CPT with integer math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.protos import pool_pb2 as pb

GB = 10**9
MICROSECONDS = 10**6


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _micros(seconds: Any) -> int:
    return max(0, round(float(seconds) * MICROSECONDS))


@dataclass(frozen=True)
class RateCard:
    cpu_second: int
    gb_second: int
    gpu_second: int

    @classmethod
    def from_settings(cls, settings: HubSettings) -> RateCard:
        return cls(settings.rate_cpu_second, settings.rate_gb_second, settings.rate_gpu_second)

    def price_cap(self, request: Resources, timeout_seconds: int) -> int:
        """The most a task can cost: its whole request for its whole timeout."""
        cpu = _ceil_div(request.cpu_millis * timeout_seconds * self.cpu_second, 1000)
        memory = _ceil_div(request.memory_bytes * timeout_seconds * self.gb_second, GB)
        return cpu + memory + request.gpus * timeout_seconds * self.gpu_second

    def cost(self, usage: dict[str, Any]) -> int:
        """What measured usage costs: CPU-seconds, peak memory over wall time, GPU-seconds."""
        cpu = _ceil_div(_micros(usage.get("cpu_seconds", 0)) * self.cpu_second, MICROSECONDS)
        memory_bytes = max(0, int(usage.get("peak_memory_bytes", 0)))
        wall = _micros(usage.get("wall_seconds", 0))
        memory = _ceil_div(memory_bytes * wall * self.gb_second, GB * MICROSECONDS)
        gpu = _ceil_div(_micros(usage.get("gpu_seconds", 0)) * self.gpu_second, MICROSECONDS)
        return cpu + memory + gpu

    def to_proto(self, registration_grant: int) -> pb.RateCard:
        return pb.RateCard(
            cpu_second=self.cpu_second,
            gb_second=self.gb_second,
            gpu_second=self.gpu_second,
            registration_grant=registration_grant,
        )
