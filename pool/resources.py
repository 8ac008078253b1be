"""CPU, memory and GPUs as one value: what a task requests and what a node offers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from hivemind_cluster.mesh.errors import InvalidInput
from hivemind_cluster.protos import pool_pb2 as pb

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Resources:
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0

    def fits_in(self, other: Resources) -> bool:
        return (
            self.cpu_millis <= other.cpu_millis
            and self.memory_bytes <= other.memory_bytes
            and self.gpus <= other.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.gpus - other.gpus,
        )

    @classmethod
    def largest(cls, items: Iterable[Resources]) -> Resources:
        """Component-wise maximum (no single item need have all three)."""
        cpu = memory = gpus = 0
        for item in items:
            cpu = max(cpu, item.cpu_millis)
            memory = max(memory, item.memory_bytes)
            gpus = max(gpus, item.gpus)
        return cls(cpu, memory, gpus)

    def to_proto(self) -> pb.Resources:
        return pb.Resources(
            cpu_millis=self.cpu_millis, memory_bytes=self.memory_bytes, gpus=self.gpus
        )

    @classmethod
    def from_proto(cls, message: pb.Resources) -> Resources:
        return cls(message.cpu_millis, message.memory_bytes, message.gpus)

    def describe(self) -> str:
        text = f"{self.cpu_millis / 1000:g} CPU, {format_bytes(self.memory_bytes)} memory"
        return text + (f", {self.gpus} GPU" if self.gpus else "")


MAX_BYTES = 1 << 60  # an exbibyte: far beyond any machine, well inside int64
MAX_CPU_MILLIS = 1 << 40


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``1048576`` → bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise InvalidInput(f"size {text[:30]!r} is not like 512M, 2G or 1048576")
    size = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not size < MAX_BYTES:
        raise InvalidInput(f"size {text[:30]!r} is more than any machine has")
    return int(size)


def parse_cpus(text: str) -> int:
    """``2``, ``0.5``, ``500m`` → millicores."""
    value = text.strip()
    try:
        millis = int(value[:-1]) if value.endswith("m") else round(float(value) * 1000)
    except (ValueError, OverflowError):  # OverflowError: inf
        raise InvalidInput(f"CPU amount {text[:30]!r} is not like 2, 0.5 or 500m") from None
    if not 0 < millis < MAX_CPU_MILLIS:
        raise InvalidInput(f"CPU amount {text[:30]!r} must be positive, within reason")
    return millis


def format_bytes(n: int) -> str:
    """``n`` in the largest binary unit it reaches: "1.5 KiB", "999 MiB", "1000 MiB"."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size  # under 1024, so 3 significant digits, or whole from 1000 up
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{n} B"
