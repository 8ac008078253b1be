"""The node registry in Redis: enrollment (redeem), listing, revocation, leaving.

Whoever makes a node an active member or retires it publishes ``MESH_CHANGED`` in the same
transaction: the hub's peer distributor (mesh/peering.py) tells every member at once."""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from hivemind_cluster.core import redisdb
from hivemind_cluster.core.errors import NotFound
from hivemind_cluster.mesh import constants, ipam, store
from hivemind_cluster.mesh.tokens import secret_hash

ACTIVE = "active"
REVOKED = "revoked"
LEFT = "left"


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    role: str
    overlay_ip: str
    wg_public_key: str
    state: str
    enrolled_at: float
    facts: dict[str, Any] = field(default_factory=dict)
    cert_serial: str = ""
    cert_pem: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # the hub's, from the node's token

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Node:
        return cls(
            id=raw["id"],
            name=raw["name"],
            role=raw["role"],
            overlay_ip=raw["overlay_ip"],
            wg_public_key=raw["wg_public_key"],
            state=raw["state"],
            enrolled_at=float(raw["enrolled_at"]),
            facts=json.loads(raw.get("facts") or "{}"),
            cert_serial=raw.get("cert_serial", ""),
            cert_pem=raw.get("cert_pem", ""),
            labels=json.loads(raw.get("labels") or "{}"),
        )


def new_node_id() -> str:
    return "n" + secrets.token_hex(5)


def redeem(
    client: redis.Redis,
    network: ipaddress.IPv4Network,
    token_id: str,
    secret: str,
    hostname: str,
    wg_public_key: str,
    facts: dict[str, Any],
) -> Node:
    """Consume one use of a token and create the node (state ``enrolling``), atomically."""
    node_id = new_node_id()
    now = time.time()
    ip, role = store.call(
        client,
        "hm_redeem",
        [
            constants.TOKEN.format(id=token_id),
            constants.IPAM_NEXT,
            constants.NODE.format(id=node_id),
            constants.NODES,
            constants.NODE_BY_WG_KEY,
            constants.NODE_BY_IP,
        ],
        [
            secret_hash(secret),
            now,
            *ipam.function_args(network),
            node_id,
            hostname,
            wg_public_key,
            redisdb.dumps(facts),
        ],
    )
    return Node(node_id, hostname, role, ip, wg_public_key, "enrolling", now, facts)


def activate(
    client: redis.Redis,
    node_id: str,
    cert_serial: int,
    cert_pem: str,
    labels: Mapping[str, str] | None = None,
) -> None:
    """The node is a member now, with the hub's ``labels`` (its token's)."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        constants.NODE.format(id=node_id),
        mapping={
            "state": ACTIVE,
            "cert_serial": str(cert_serial),
            "cert_pem": cert_pem,
            "labels": redisdb.dumps(dict(labels or {})),
        },
    )
    publish_change(pipe, node_id, ACTIVE)
    pipe.execute()


def publish_change(pipe: Any, node_id: str, state: str) -> None:
    """Queue the ``MESH_CHANGED`` message for a node that became ``state`` (a hint: the
    distributor reads the node's record itself)."""
    pipe.publish(constants.MESH_CHANGED, redisdb.dumps({"node_id": node_id, "state": state}))


def get_node(client: redis.Redis, ref: str) -> Node:
    """A node by id, or by name when the name is unambiguous."""
    raw: dict[str, str] = client.hgetall(constants.NODE.format(id=ref))  # type: ignore[assignment]
    if raw:
        return Node.from_hash(raw)
    matches = [n for n in list_nodes(client) if n.name == ref]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise NotFound(f"several nodes are named {ref!r}; use the node id")
    raise NotFound(f"no node {ref!r}")


def list_nodes(client: redis.Redis) -> list[Node]:
    ids = client.zrange(constants.NODES, 0, -1)
    pipe = client.pipeline(transaction=False)
    for node_id in ids:
        pipe.hgetall(constants.NODE.format(id=node_id))
    return [Node.from_hash(raw) for raw in pipe.execute() if raw]


def wg_keys_by_node(client: redis.Redis) -> dict[str, str]:
    """node id -> WireGuard public key, for every node ever enrolled (one read)."""
    by_key: dict[str, str] = client.hgetall(constants.NODE_BY_WG_KEY)  # type: ignore[assignment]
    return {node_id: key for key, node_id in by_key.items()}


def retire(client: redis.Redis, node: Node, state: str) -> None:
    """Mark a node revoked or left and refuse its certificate from now on."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        constants.NODE.format(id=node.id), mapping={"state": state, "retired_at": time.time()}
    )
    if node.cert_serial:
        pipe.sadd(constants.REVOKED_SERIALS, node.cert_serial)
    publish_change(pipe, node.id, state)
    pipe.execute()


def is_serial_revoked(client: redis.Redis, serial: int) -> bool:
    return bool(client.sismember(constants.REVOKED_SERIALS, str(serial)))
