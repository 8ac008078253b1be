"""GPU detection for registration: NVIDIA GPUs through ``GPUtil`` (which runs ``nvidia-smi``).

A machine without NVIDIA GPUs, without ``nvidia-smi`` or with a broken driver simply has no
GPUs; detection never fails.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import GPUtil

from hivemind_cluster.core.units import MIB

log = logging.getLogger(__name__)

# The columns GPUtil 1.4 asks nvidia-smi for, in order (--format=csv,noheader,nounits).
NVIDIA_SMI_FIELDS = (
    "index",
    "uuid",
    "utilization.gpu",
    "memory.total",
    "memory.used",
    "memory.free",
    "driver_version",
    "name",
    "gpu_serial",
    "display_active",
    "display_mode",
    "temperature.gpu",
)


@dataclass(frozen=True)
class Gpu:
    index: int
    model: str
    memory_bytes: int
    uuid: str


def gpu_from_fields(index: object, model: object, memory_mib: object, uuid: object) -> Gpu:
    """One Gpu from nvidia-smi values (memory in MiB; unknown memory counts as 0)."""
    mib = float(str(memory_mib))
    return Gpu(
        index=int(str(index)),
        model=str(model).strip(),
        memory_bytes=0 if math.isnan(mib) else int(mib * MIB),
        uuid=str(uuid).strip(),
    )


def parse_nvidia_smi_csv(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=<NVIDIA_SMI_FIELDS> --format=csv,noheader,nounits``.

    Raises ValueError on a line that does not have exactly those columns.
    """
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        values = [value.strip() for value in line.split(", ")]
        if len(values) != len(NVIDIA_SMI_FIELDS):
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        row = dict(zip(NVIDIA_SMI_FIELDS, values, strict=True))
        memory = row["memory.total"]
        gpus.append(
            gpu_from_fields(
                row["index"], row["name"], "nan" if memory == "[N/A]" else memory, row["uuid"]
            )
        )
    return gpus


def detect_gpus() -> list[Gpu]:
    """The NVIDIA GPUs of this machine, or [] when there are none or they cannot be read."""
    try:
        found = GPUtil.getGPUs()
        return [gpu_from_fields(g.id, g.name, g.memoryTotal, g.uuid) for g in found]
    except Exception as error:  # GPUtil raises whatever its parsing hits
        log.debug("no GPUs detected: %s", error)
        return []
