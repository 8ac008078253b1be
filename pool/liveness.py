"""Liveness: which workers are connected, when each was last heard, their live state.

``Liveness`` owns the agent sessions (one per node), the monotonic time each node was
last heard from (the reaper loses a node silent for ``heartbeat_timeout`` seconds), the
last heartbeat (wall clock) of workers whose stream ended, and the workers whose live
state changed since the last flush. ``flush_once`` writes those into ``hm:worker-live``,
one command per FLUSH_CHUNK workers; the pool calls it every HEARTBEAT_INTERVAL. It also
runs the changes of one node (its connect, its loss) one at a time, each to its end even
when its caller is cancelled (a torn stream, the pool stopping): a half-done change would
leave Redis and memory disagreeing, so the pool waits for those in flight when it stops.
It notices the workers revoked while connected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from hivemind_cluster.mesh import membership
from hivemind_cluster.model.states import NodeState
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool import registry
from hivemind_cluster.pool.registry import AgentSession
from hivemind_cluster.protos import pool_pb2 as pb

log = logging.getLogger("hivemind.pool")
T = TypeVar("T")
HEARTBEAT_INTERVAL = 1.0  # what agents are told to keep, and how often live state is flushed
FLUSH_CHUNK = 500


class Liveness:
    def __init__(self, db: Any, heartbeat_timeout: float) -> None:
        self.db = db
        self.heartbeat_timeout = heartbeat_timeout
        self._sessions: dict[str, AgentSession] = {}
        self._last_seen: dict[str, float] = {}  # node id -> monotonic time it was last heard
        self._last_wall: dict[str, float] = {}  # disconnected worker -> its last heartbeat
        self._dirty: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._changes: set[asyncio.Task[Any]] = set()  # node changes in flight
        self._revoked_seen = -1

    # ---- sessions ------------------------------------------------------------------------

    @property
    def sessions(self) -> Mapping[str, AgentSession]:
        """The connected agents by node id, read-only (connect, disconnect, lose change it)."""
        return MappingProxyType(self._sessions)

    def session(self, node_id: str) -> AgentSession | None:
        return self._sessions.get(node_id)

    def send(self, node_id: str, message: pb.PoolMessage) -> None:
        """Queue a message for the node's agent, if it is connected."""
        session = self._sessions.get(node_id)
        if session is not None:
            session.send(message)

    def close_session(self, node_id: str) -> None:
        """End the node's current stream, if any (it is connecting again)."""
        previous = self._sessions.pop(node_id, None)
        if previous is not None:
            previous.close()

    def attach(self, session: AgentSession) -> None:
        """The node's stream is registered and reconciled: it is connected from now on."""
        self._sessions[session.node_id] = session
        self.heard_from(session.node_id)

    def detach(self, session: AgentSession) -> bool:
        """The stream ended; False when it was no longer the node's current one."""
        if self._sessions.get(session.node_id) is not session:
            return False
        del self._sessions[session.node_id]
        self._last_wall[session.node_id] = session.last_heartbeat_wall
        self._dirty.add(session.node_id)
        return True

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            session.close()

    async def change(self, node_id: str, change: Callable[[], Awaitable[T]]) -> T:
        """Run ``change()`` under the node's lock: a connect and a loss of one node each
        await Redis several times and must not interleave. Once begun, it runs to its end
        (holding the lock) even if the caller is cancelled; still waiting for the lock, it
        is dropped with its caller, as nothing was done yet."""
        begun = False

        async def under_lock() -> T:
            nonlocal begun
            async with self._locks.setdefault(node_id, asyncio.Lock()):
                begun = True
                return await change()

        task = asyncio.create_task(under_lock(), name=f"change of node {node_id}")
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if begun:
                task.add_done_callback(log_failure)  # nobody else hears how it ends
            else:
                task.cancel()
            raise

    def changes_in_flight(self) -> set[asyncio.Task[Any]]:
        """The node changes begun or waiting (``Pool.stop`` lets them finish, briefly)."""
        return set(self._changes)

    # ---- being heard ---------------------------------------------------------------------

    def heard_from(self, node_id: str, at: float | None = None) -> None:
        self._last_seen[node_id] = time.monotonic() if at is None else at

    def beat(self, session: AgentSession, heartbeat: pb.Heartbeat) -> None:
        session.heartbeat = heartbeat
        session.last_heartbeat_wall = time.time()
        self._dirty.add(session.node_id)

    def silent_nodes(self) -> list[str]:
        """The nodes not heard from for ``heartbeat_timeout`` seconds."""
        deadline = time.monotonic() - self.heartbeat_timeout
        return [node_id for node_id, seen in self._last_seen.items() if seen < deadline]

    def is_silent(self, node_id: str) -> bool:
        seen = self._last_seen.get(node_id)
        return seen is not None and seen < time.monotonic() - self.heartbeat_timeout

    def forget(self, node_id: str) -> None:
        """The node is lost: nothing is expected of it until it connects again."""
        self._last_seen.pop(node_id, None)

    async def mark_lost(self, node_id: str) -> None:
        """Close the node's stream and record it lost, with its last heartbeat, in Redis."""
        session = self._sessions.pop(node_id, None)
        if session is not None:
            session.close()
            self._last_wall[node_id] = session.last_heartbeat_wall
        last_heartbeat = self._last_wall.get(node_id, 0)
        lost = registry.live_state(None, NodeState.LOST, last_heartbeat)
        await self.db.hset(keys.WORKER_LIVE, node_id, lost)

    async def newly_revoked(self) -> list[AgentSession]:
        """Connected agents whose certificates were revoked (looked for when the set grows)."""
        revoked_count = await membership.revoked_count(self.db)
        if revoked_count == self._revoked_seen:
            return []
        self._revoked_seen = revoked_count
        sessions = list(self._sessions.values())
        if not sessions:
            return []
        revoked = await membership.revoked_among(self.db, [s.caller.serial for s in sessions])
        return [
            session for session, is_revoked in zip(sessions, revoked, strict=True) if is_revoked
        ]

    async def flush_once(self) -> None:
        """Write the live state of every worker that changed since the last flush."""
        dirty, self._dirty = list(self._dirty), set()
        for start in range(0, len(dirty), FLUSH_CHUNK):
            chunk = dirty[start : start + FLUSH_CHUNK]
            await registry.flush_heartbeats(self.db, self._sessions, chunk, self._last_wall)


def log_failure(task: asyncio.Task[Any]) -> None:
    """A node change whose caller went: its failure is logged here or nowhere."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("%s failed: %r", task.get_name(), error)
