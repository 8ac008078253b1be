"""Per-node series in the Prometheus text format (0.0.4), written line by line.

prometheus-client builds a ``Sample`` for every series and formats each one: about 4 µs a
series. A hub with 5,000 members has over 20,000 per-node series (each worker's heartbeat
age, each peer's WireGuard handshake age and bytes), which that way alone would take one
scrape past 100 ms. Those few families, one label (``node``) each, are written here
directly; everything else goes through prometheus-client (``families_text`` for families
made at scrape time), and the texts are served one after the other (a family appears in
only one of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class NodeFamily:
    """One family of series labelled ``node``: ``values`` are (node id, value)."""

    name: str  # a counter's without ``_total`` (added here, as prometheus-client does)
    documentation: str
    kind: Literal["gauge", "counter"]
    values: Sequence[tuple[str, float]]


class _Listed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def families_text(families: list[Metric]) -> bytes:
    """prometheus-client's text of families made at scrape time (not in any registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Listed(families))
    return generate_latest(registry)


def number(value: float) -> str:
    """As Prometheus (and prometheus-client) write a sample value."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def label_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(families: Iterable[NodeFamily]) -> bytes:
    lines: list[str] = []
    for family in families:
        name = f"{family.name}_total" if family.kind == "counter" else family.name
        lines.append(f"# HELP {name} {family.documentation}")
        lines.append(f"# TYPE {name} {family.kind}")
        lines.extend(
            f'{name}{{node="{label_value(node)}"}} {number(value)}' for node, value in family.values
        )
    return ("\n".join(lines) + "\n").encode() if lines else b""
