"""Connected workers: their stream sessions and what the pool records about them in Redis.

``hm:worker:{id}`` holds a worker's registration (capacity, GPUs, Docker, labels), written
when it connects. Live state (last heartbeat, usage) lives in memory and is flushed once a
second into one hash, ``hm:worker-live`` (node id -> JSON): one command per 500 workers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hivemind_cluster.mesh import membership
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.states import NodeState
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool.auth import Caller
from hivemind_cluster.pool.scheduler import Scheduler
from hivemind_cluster.protos import pool_pb2 as pb

MAX_OUTBOX = 10_000


@dataclass
class AgentSession:
    """One connected agent stream."""

    caller: Caller
    register: pb.Register
    outbox: asyncio.Queue[pb.PoolMessage | None] = field(default_factory=asyncio.Queue)
    heartbeat: pb.Heartbeat = field(default_factory=pb.Heartbeat)
    connected_at: float = field(default_factory=time.time)
    last_heartbeat_wall: float = field(default_factory=time.time)
    overflowed: bool = False

    @property
    def node_id(self) -> str:
        return self.caller.node_id

    def send(self, message: pb.PoolMessage) -> None:
        """Queue a message; an agent that stops reading past MAX_OUTBOX is disconnected."""
        if self.overflowed:
            return
        if self.outbox.qsize() >= MAX_OUTBOX:
            self.overflowed = True
            self.outbox.put_nowait(None)
            return
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)


async def save_registration(db: Any, session: AgentSession, capacity: Resources) -> None:
    """Record what a worker registered: capacity, GPUs, Docker, labels (all bounded)."""
    register = session.register
    key = keys.WORKER.format(id=session.node_id)
    pipe = db.pipeline(transaction=True)
    pipe.sadd(keys.WORKERS, session.node_id)
    pipe.hset(
        key,
        mapping={
            "name": session.caller.name,
            "capacity": json.dumps(
                {
                    "cpu_millis": capacity.cpu_millis,
                    "memory_bytes": capacity.memory_bytes,
                    "gpus": capacity.gpus,
                }
            ),
            "gpus": json.dumps(
                [
                    {
                        "index": g.index,
                        "model": g.model[:100],
                        "memory_bytes": g.memory_bytes,
                        "uuid": g.uuid[:100],
                    }
                    for g in register.gpus[:64]
                ]
            ),
            "docker_available": "1" if register.docker_available else "0",
            "docker_version": register.docker_version[:40],
            "labels": json.dumps(dict(list(register.labels.items())[:50])),
            "agent_version": register.agent_version[:40],
            "registered_at": session.connected_at,
        },
    )
    pipe.hset(keys.WORKER_LIVE, session.node_id, live_state(session))
    await pipe.execute()


def live_state(session: AgentSession | None, state: str = "", last_heartbeat: float = 0) -> str:
    """The JSON kept in ``hm:worker-live`` for one worker."""
    if session is None:
        return json.dumps({"state": state, "last_heartbeat": last_heartbeat})
    beat = session.heartbeat
    return json.dumps(
        {
            "state": NodeState.DRAINING if beat.draining else NodeState.READY,
            "last_heartbeat": session.last_heartbeat_wall,
            "cpu_percent": beat.cpu_percent,
            "memory_used_bytes": beat.memory_used_bytes,
            "running_tasks": beat.running_tasks,
        }
    )


async def flush_heartbeats(
    db: Any,
    sessions: Mapping[str, AgentSession],
    node_ids: list[str],
    last_heartbeats: Mapping[str, float],
) -> None:
    """Write the live state of these workers to Redis in one command (the disconnected
    ones: offline, with their last heartbeat)."""
    states = {
        node_id: live_state(
            sessions.get(node_id), NodeState.OFFLINE, last_heartbeats.get(node_id, 0)
        )
        for node_id in node_ids
    }
    if states:
        await db.hset(keys.WORKER_LIVE, mapping=states)


async def node_states(
    db: Any, sessions: Mapping[str, AgentSession], scheduler: Scheduler, owner: str = ""
) -> list[pb.NodeState]:
    """Every active member with its live pool state (workers: capacity, use, tasks); with
    ``owner``, ``running`` lists that account's tasks only (``running_count`` all)."""
    ids = await membership.member_ids(db)
    pipe = db.pipeline(transaction=False)
    membership.queue_records(pipe, ids)
    for node_id in ids:
        pipe.hgetall(keys.WORKER.format(id=node_id))
    pipe.hgetall(keys.WORKER_LIVE)
    *replies, live = await pipe.execute()
    states = []
    for node, worker in zip(replies[: len(ids)], replies[len(ids) :], strict=True):
        if membership.is_active(node):
            worker = {**worker, **json.loads(live.get(node["id"]) or "{}")}
            states.append(_node_state(node, worker, sessions, scheduler))
    if owner:
        await _keep_tasks_of(db, owner, states)
    return states


async def _keep_tasks_of(db: Any, owner: str, states: list[pb.NodeState]) -> None:
    running = [task_id for state in states for task_id in state.running]
    pipe = db.pipeline(transaction=False)
    for task_id in running:
        pipe.hget(keys.TASK.format(id=task_id), "owner")
    owners = dict(zip(running, await pipe.execute() if running else [], strict=True))
    for state in states:
        mine = [task_id for task_id in state.running if owners.get(task_id) == owner]
        del state.running[:]
        state.running.extend(mine)


def _node_state(
    node: dict[str, str],
    worker: dict[str, Any],
    sessions: Mapping[str, AgentSession],
    scheduler: Scheduler,
) -> pb.NodeState:
    node_id = node["id"]
    session = sessions.get(node_id)
    slot = scheduler.workers.get(node_id)
    state = worker.get("state", "")
    if session is not None:
        state = NodeState.DRAINING if session.heartbeat.draining else NodeState.READY
    message = pb.NodeState(
        id=node_id,
        name=node.get("name", ""),
        role=node.get("role", ""),
        overlay_ip=node.get("overlay_ip", ""),
        connected=session is not None,
        state=state or (NodeState.OFFLINE if node.get("role") == "worker" else ""),
        last_heartbeat=float(worker.get("last_heartbeat") or 0),
        docker_available=worker.get("docker_available") == "1",
        docker_version=worker.get("docker_version", ""),
        labels=json.loads(worker.get("labels") or "{}"),
        gpus=[pb.Gpu(**g) for g in json.loads(worker.get("gpus") or "[]")],
        running=scheduler.tasks_on(node_id),
    )
    message.running_count = len(message.running)
    if slot is not None:
        message.capacity.CopyFrom(slot.capacity.to_proto())
        message.allocated.CopyFrom(slot.allocated.to_proto())
    if session is not None:
        message.cpu_percent = session.heartbeat.cpu_percent
        message.memory_used_bytes = session.heartbeat.memory_used_bytes
        message.last_heartbeat = session.last_heartbeat_wall
    return message
