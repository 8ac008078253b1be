"""Facts about this machine: hardware at enrollment, capacity, GPUs and Docker for the pool."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

import psutil

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.units import parse_cpus, parse_size
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.protos import enrollment_pb2 as pb
from hivemind_cluster.protos import pool_pb2 as pb_pool


def hardware_facts() -> pb.HardwareFacts:
    return pb.HardwareFacts(
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        memory_bytes=psutil.virtual_memory().total,
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
    )


@dataclass(frozen=True)
class Facts:
    """What a worker registers with the pool."""

    capacity: Resources
    gpus: list[pb_pool.Gpu] = field(default_factory=list)
    docker_available: bool = False
    docker_version: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def worker_facts(cpus: str = "", memory: str = "", labels: str = "") -> Facts:
    """This machine's capacity (``cpus``/``memory`` override what is detected), GPUs, Docker."""
    from hivemind_cluster.agent.executor import DockerExecutor
    from hivemind_cluster.agent.gpus import detect_gpus

    gpus = [
        pb_pool.Gpu(index=g.index, model=g.model, memory_bytes=g.memory_bytes, uuid=g.uuid)
        for g in detect_gpus()
    ]
    docker_available, docker_version = DockerExecutor.probe()
    return Facts(
        capacity=Resources(
            parse_cpus(cpus) if cpus else (psutil.cpu_count(logical=True) or 1) * 1000,
            parse_size(memory) if memory else psutil.virtual_memory().total,
            len(gpus),
        ),
        gpus=gpus,
        docker_available=docker_available,
        docker_version=docker_version if docker_available else "",
        labels=parse_labels(labels),
    )


def parse_labels(text: str) -> dict[str, str]:
    """``"zone=lab,disk=ssd"`` → ``{"zone": "lab", "disk": "ssd"}``."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"label {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels
