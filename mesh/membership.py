"""What the rest of the hub may ask the mesh about its members (the pool calls this on
every RPC): who a node is, whether it is still an active member, whether a certificate
was revoked. Async, over the caller's ``redis.asyncio`` client (decoded replies).

Only this module of mesh reads mesh's keys on behalf of others; the pool never names
them (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hivemind_cluster.mesh import constants, nodes

ACTIVE = nodes.ACTIVE  # the state of a member in good standing (part of this API)


@dataclass(frozen=True)
class Standing:
    """A certificate's holder as the mesh knows it right now."""

    revoked: bool  # the certificate's serial was revoked
    role: str  # "" for an unknown node
    state: str  # active, revoked, departed; "" for an unknown node
    name: str


async def standing(db: Any, node_id: str, serial: int) -> Standing:
    """One round trip: is the certificate revoked, and the node's role, state and name."""
    pipe = db.pipeline(transaction=False)
    pipe.sismember(constants.REVOKED_SERIALS, str(serial))
    pipe.hmget(constants.NODE.format(id=node_id), ["role", "state", "name"])
    revoked, (role, state, name) = await pipe.execute()
    return Standing(bool(revoked), role or "", state or "", name or "")


async def active_among(db: Any, node_ids: list[str]) -> dict[str, bool]:
    """For each node id: is it still an active member (one round trip)?"""
    if not node_ids:
        return {}
    pipe = db.pipeline(transaction=False)
    for node_id in node_ids:
        pipe.hget(constants.NODE.format(id=node_id), "state")
    states = await pipe.execute()
    return {n: state == ACTIVE for n, state in zip(node_ids, states, strict=True)}


async def revoked_count(db: Any) -> int:
    """How many certificates were ever revoked: it grows with every revocation."""
    return int(await db.scard(constants.REVOKED_SERIALS))


async def revoked_among(db: Any, serials: list[int]) -> list[bool]:
    if not serials:
        return []
    replies = await db.smismember(constants.REVOKED_SERIALS, [str(s) for s in serials])
    return [bool(r) for r in replies]


async def member_ids(db: Any) -> list[str]:
    """Every node ever enrolled, in enrollment order (active or not: see ``is_active``)."""
    ids: list[str] = await db.zrange(constants.NODES, 0, -1)
    return ids


def queue_records(pipe: Any, node_ids: list[str]) -> None:
    """Queue the reads of these nodes' records (id, name, role, overlay_ip, state, …) on
    the caller's pipeline, one reply each, so a caller can read its own keys in the same
    round trip."""
    for node_id in node_ids:
        pipe.hgetall(constants.NODE.format(id=node_id))


def is_active(record: dict[str, str]) -> bool:
    return bool(record) and record.get("state") == ACTIVE
