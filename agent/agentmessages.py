"""The messages an agent opens its stream with and beats on it: the registration (the
machine's capacity and facts, the attempts it holds), the pool's answer to it, and the
heartbeat (its usage)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
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


# The agent's end of ``Pool.Connect``.
Stream = grpc.aio.StreamStreamCall[pb.AgentMessage, pb.PoolMessage]


async def registration_answer(call: Stream) -> tuple[pb.Registered, list[pb.PoolMessage]]:
    """The pool's answer to the registration, and what it sent before it (the cancel of
    an attempt cancelled while this agent was away), handled after it."""
    before: list[pb.PoolMessage] = []
    while isinstance(message := await call.read(), pb.PoolMessage):
        if message.WhichOneof("kind") == "registered":
            return message.registered, before
        before.append(message)
    raise ConnectionError("the pool did not acknowledge the registration")


def heartbeat(running_tasks: int, draining: bool) -> pb.Heartbeat:
    return pb.Heartbeat(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_bytes=psutil.virtual_memory().used,
        running_tasks=running_tasks,
        draining=draining,
    )
