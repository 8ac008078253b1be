"""The rate card: what a task's price cap is, and what it costs for what it held.

A task pays for the resources it requested, for as long as it ran: while it runs, its CPUs,
memory and GPUs are set aside on the worker and cannot be rented to anyone else, whether it
uses them or not (clouds and Golem bill the same way, and the price cap is quoted the same
way). What it measurably used stays on its record; it does not change the price.

All prices are integers of micro-CPT: per CPU-second, per GB-second of memory (GB = 10^9
bytes) and per GPU-second. Wall time arrives as seconds; it is turned into integer
microseconds once, and each part is rounded up to a whole micro-CPT with integer math.

The price cap is a limit, not only a deposit: since the cost grows with wall time alone, a cap
buys a known wall time for a request (``seconds_bought``, whole microseconds, never costing more
than the cap). The pool tells the agent to stop the task there (``price_cap_seconds``) and pays
exactly the cap for a task that used all of it (``capped_cost``); a cap buying less than
MIN_CAP_SECONDS is refused at submission, as a container cannot do anything useful in less.
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
MIN_CAP_SECONDS = 1  # the least wall time a price cap must buy (a container takes ~0.5 s)
PRICE_CAP_REACHED = "price cap reached"  # how a task the cap stopped ends ("failed")


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _micros(seconds: Any) -> int:
    return max(0, round(float(seconds) * MICROSECONDS))


def _part_cost(amount: int, per_unit: int, rate: int, wall_micros: int) -> int:
    """``amount`` (in 1/``per_unit`` units) held ``wall_micros`` at ``rate``, rounded up."""
    return _ceil_div(amount * wall_micros * rate, per_unit * MICROSECONDS)


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
        parts = tuple(
            Part(unit, amount / per_unit, rate, _part_cost(amount, per_unit, rate, wall))
            for unit, amount, per_unit, rate in self._held(request)
        )
        return Charge(wall / MICROSECONDS, parts)

    def _held(self, request: Resources) -> tuple[tuple[str, int, int, int], ...]:
        """(unit, amount requested, amount per unit, rate) of each resource a task holds."""
        return (
            ("CPU", request.cpu_millis, MILLICPUS, self.cpu_second),
            ("GB", request.memory_bytes, GB, self.gb_second),
            ("GPU", request.gpus, 1, self.gpu_second),
        )

    def _micro_cost(self, request: Resources, wall_micros: int) -> int:
        return sum(
            _part_cost(amount, per_unit, rate, wall_micros)
            for _unit, amount, per_unit, rate in self._held(request)
        )

    def cost(self, request: Resources, wall_seconds: Any) -> int:
        """What a task that held ``request`` for ``wall_seconds`` costs (before the cap)."""
        return self._micro_cost(request, _micros(wall_seconds))

    def price_cap(self, request: Resources, timeout_seconds: int) -> int:
        """The most a task can cost: its whole request held for its whole timeout."""
        return self.cost(request, timeout_seconds)

    def seconds_bought(self, request: Resources, price_cap: int) -> float | None:
        """The longest wall time, in whole microseconds, that ``price_cap`` pays for: holding
        ``request`` that long costs at most the cap, a microsecond more costs more. None when
        the request costs nothing at these rates (no cap limits it)."""
        micros = self._micros_bought(request, price_cap)
        return None if micros is None else micros / MICROSECONDS

    def _micros_bought(self, request: Resources, price_cap: int) -> int | None:
        # Past ``high`` microseconds any one charged part alone costs more than the cap.
        bounds = [
            price_cap * per_unit * MICROSECONDS // (amount * rate) + 1
            for _unit, amount, per_unit, rate in self._held(request)
            if amount * rate > 0
        ]
        if not bounds:
            return None
        low, high = 0, min(bounds)  # the cost is monotonic: cost(low) <= cap < cost(high)
        while high - low > 1:
            middle = (low + high) // 2
            if self._micro_cost(request, middle) <= price_cap:
                low = middle
            else:
                high = middle
        return low

    def price_cap_seconds(self, request: Resources, timeout_seconds: int, price_cap: int) -> float:
        """When the price cap stops a started task: the wall time it buys, or 0 when the
        timeout comes first (or nothing is charged), so the timeout alone ends the task."""
        if price_cap >= self.price_cap(request, timeout_seconds):
            return 0.0  # the cap pays for the whole timeout (the default cap): no search
        bought = self.seconds_bought(request, price_cap)
        if bought is None or bought >= timeout_seconds:
            return 0.0
        return max(bought, 1 / MICROSECONDS)  # a cap that buys nothing stops it at once

    def capped_cost(self, request: Resources, wall_seconds: Any, price_cap: int) -> int:
        """What a task that held ``request`` for ``wall_seconds`` pays under its cap: all of
        the cap once it ran for all the time the cap buys, else its cost (never over the cap)."""
        # Ran all the time the cap buys <=> one microsecond more would cost more than the cap.
        wall = _micros(wall_seconds)
        if self._micro_cost(request, wall + 1) > price_cap:
            return price_cap
        return min(self._micro_cost(request, wall), price_cap)

    def to_proto(self, registration_grant: int) -> pb.RateCard:
        return pb.RateCard(
            cpu_second=self.cpu_second,
            gb_second=self.gb_second,
            gpu_second=self.gpu_second,
            registration_grant=registration_grant,
        )
