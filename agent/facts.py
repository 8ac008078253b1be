"""Hardware facts reported at enrollment (GPUs and Docker arrive with the pool)."""

from __future__ import annotations

import platform

import psutil

from hivemind_cluster.protos import enrollment_pb2 as pb


def hardware_facts() -> pb.HardwareFacts:
    return pb.HardwareFacts(
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        memory_bytes=psutil.virtual_memory().total,
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
    )
