"""CPU, memory and GPUs as one value: what a task requests and what a node offers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.protos import pool_pb2 as pb


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
