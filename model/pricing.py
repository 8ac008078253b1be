"""The rate card: what a task's price cap is, and what it costs for what it held.

A task pays for the resources it requested, for as long as it ran: while it runs, its CPUs,
memory and GPUs are set aside on the worker and cannot be rented to anyone else, whether it
uses them or not (clouds and Golem bill the same way, and the price cap is quoted the same
way). What it measurably used stays on its record; it does not change the price.

All prices are integers of micro-CPT: per CPU-second, per GB-second of memory (GB = 10^9
bytes) and per GPU-second. Wall time arrives as seconds; it is turned into integer
microseconds once, and each part is rounded up to a whole micro-CPT with integer math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.protos import pool_pb2 as pb

GB = 10**9
MICROSECONDS = 10**6
MILLICPUS = 1000


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _micros(seconds: Any) -> int:
    return max(0, round(float(seconds) * MICROSECONDS))


@dataclass(frozen=True)
class Part:
    """One requested resource held for the wall time: ``quantity`` units at ``rate``."""

    unit: str  # "CPU", "GB" or "GPU"
    quantity: float  # how many units the task requested (for display; cost is exact)
    rate: int  # micro-CPT per unit-second
    cost: int  # micro-CPT, rounded up


@dataclass(frozen=True)
class Charge:
    """What holding a request for a wall time costs, resource by resource (before the cap)."""

    wall_seconds: float
    parts: tuple[Part, ...]

    @property
    def total(self) -> int:
        return sum(part.cost for part in self.parts)


@dataclass(frozen=True)
class RateCard:
    cpu_second: int
    gb_second: int
    gpu_second: int

    @classmethod
    def from_settings(cls, settings: HubSettings) -> RateCard:
        return cls(settings.rate_cpu_second, settings.rate_gb_second, settings.rate_gpu_second)

    def charge(self, request: Resources, wall_seconds: Any) -> Charge:
        """Wall time times each requested resource at its rate, each part rounded up."""
        wall = _micros(wall_seconds)
        held = (
            ("CPU", request.cpu_millis, MILLICPUS, self.cpu_second),
            ("GB", request.memory_bytes, GB, self.gb_second),
            ("GPU", request.gpus, 1, self.gpu_second),
        )
        parts = tuple(
            Part(
                unit,
                amount / per_unit,
                rate,
                _ceil_div(amount * wall * rate, per_unit * MICROSECONDS),
            )
            for unit, amount, per_unit, rate in held
        )
        return Charge(wall / MICROSECONDS, parts)

    def cost(self, request: Resources, wall_seconds: Any) -> int:
        """What a task that held ``request`` for ``wall_seconds`` costs (before the cap)."""
        return self.charge(request, wall_seconds).total

    def price_cap(self, request: Resources, timeout_seconds: int) -> int:
        """The most a task can cost: its whole request held for its whole timeout."""
        return self.cost(request, timeout_seconds)

    def to_proto(self, registration_grant: int) -> pb.RateCard:
        return pb.RateCard(
            cpu_second=self.cpu_second,
            gb_second=self.gb_second,
            gpu_second=self.gpu_second,
            registration_grant=registration_grant,
        )
