"""The messages an agent opens its stream with and beats on it: the registration (the
machine's capacity and facts, the attempts it holds) and the heartbeat (its usage)."""

from __future__ import annotations

from collections.abc import Iterable

import psutil

from hivemind_cluster import __version__
from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.protos import pool_pb2 as pb


def registration(facts: Facts, attempts: Iterable[tuple[str, int]]) -> pb.Register:
    return pb.Register(
        capacity=facts.capacity.to_proto(),
        gpus=facts.gpus,
        docker_available=facts.docker_available,
        docker_version=facts.docker_version,
        labels=facts.labels,
        agent_version=__version__,
        running=[pb.RunningAttempt(task_id=task_id, attempt=n) for task_id, n in attempts],
    )


def heartbeat(running_tasks: int, draining: bool) -> pb.Heartbeat:
    return pb.Heartbeat(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_bytes=psutil.virtual_memory().used,
        running_tasks=running_tasks,
        draining=draining,
    )
