"""The hub's view of the mesh: every node joined with its live WireGuard statistics.

One row per node, built here for both lists of it, ``hivemind-hub nodes`` (``describe``,
from the registry) and the web's mesh page (web/mesh.py, from the pool), so they agree:

- ``state`` is the node's membership: ``active``, ``revoked`` or ``left`` (the hub: active).
- ``online``: an active node connected to the pool, where the lister knows that (the web,
  for workers); otherwise one whose last handshake is recent (WireGuard re-handshakes at
  least every 2 minutes on a live tunnel). The hub: while its interface can be read.
- ``last_handshake`` / ``handshake_age`` and ``rx_bytes`` / ``tx_bytes`` come from the
  hub's interface; ``None`` when unknown (no peer, or the interface could not be read),
  never a made-up 0.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from hivemind_cluster.core.names import HUB_NODE_ID
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import nodes
from hivemind_cluster.mesh.wireguard import ONLINE_HANDSHAKE_AGE, PeerStatus, WireGuardInterface

Row = dict[str, Any]
# WireGuard public key -> the peer's statistics; None: the interface could not be read.
Peers = dict[str, PeerStatus] | None


@dataclass(frozen=True)
class Member:
    """One node as a lister knows it (the registry, or the pool for the web)."""

    id: str
    name: str
    role: str
    overlay_ip: str
    wg_public_key: str
    state: str = nodes.ACTIVE
    # Whether its pool stream is connected, where the lister knows (None: it does not).
    connected: bool | None = None
    # The lister's own columns, added to the row as they are.
    details: Row = field(default_factory=dict)


def node_rows(
    settings: HubSettings, members: Iterable[Member], peers: Peers, now: float, hub: Row
) -> list[Row]:
    """The hub's row (with the lister's ``hub`` columns), then one row per member."""
    return [
        hub_row(settings, peers is not None) | hub,
        *(member_row(m, peers, now) for m in members),
    ]


def hub_name(settings: HubSettings) -> str:
    return settings.name or socket.gethostname()


def hub_row(settings: HubSettings, interface_up: bool) -> Row:
    return {
        "id": HUB_NODE_ID,
        "name": hub_name(settings),
        "role": "hub",
        "overlay_ip": settings.hub_ip,
        "state": nodes.ACTIVE,
        "online": interface_up,
        "last_handshake": None,
        "handshake_age": None,
        "rx_bytes": None,
        "tx_bytes": None,
    }


def member_row(member: Member, peers: Peers, now: float) -> Row:
    peer = (peers or {}).get(member.wg_public_key)
    handshake = peer.latest_handshake if peer and peer.latest_handshake else None
    handshake_age = now - handshake if handshake else None
    fresh = handshake_age is not None and handshake_age < ONLINE_HANDSHAKE_AGE
    reachable = fresh if member.connected is None else member.connected
    return {
        "id": member.id,
        "name": member.name,
        "role": member.role,
        "overlay_ip": member.overlay_ip,
        "state": member.state,
        "online": member.state == nodes.ACTIVE and reachable,
        "last_handshake": handshake,
        "handshake_age": handshake_age,
        "rx_bytes": peer.rx_bytes if peer else None,
        "tx_bytes": peer.tx_bytes if peer else None,
    } | member.details


def peers_by_key(peers: Iterable[PeerStatus]) -> dict[str, PeerStatus]:
    return {p.public_key: p for p in peers}


def describe(
    settings: HubSettings, client: redis.Redis, include_retired: bool = False
) -> list[Row]:
    """``hivemind-hub nodes``: the registry's nodes (active ones unless ``include_retired``)
    with their facts; online from handshakes (this command does not ask the pool)."""
    interface = WireGuardInterface(settings.interface)
    peers = peers_by_key(interface.peers()) if interface.exists() else None
    listed = [n for n in nodes.list_nodes(client) if include_retired or n.state == nodes.ACTIVE]
    return node_rows(settings, map(registered, listed), peers, time.time(), {})


def registered(node: nodes.Node) -> Member:
    facts = {
        "cpu_cores": node.facts.get("cpu_cores"),
        "memory_bytes": node.facts.get("memory_bytes"),
        "enrolled_at": node.enrolled_at,
    }
    return Member(
        node.id, node.name, node.role, node.overlay_ip, node.wg_public_key, node.state, None, facts
    )
