"""The hub's view of the mesh: every node joined with its live WireGuard statistics."""

from __future__ import annotations

import socket
import time
from typing import Any

import redis

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import nodes
from hivemind_cluster.mesh.wireguard import ONLINE_HANDSHAKE_AGE, PeerStatus, WireGuardInterface


def describe(
    settings: HubSettings, client: redis.Redis, include_retired: bool = False
) -> list[dict[str, Any]]:
    interface = WireGuardInterface(settings.interface)
    peers: dict[str, PeerStatus] = {}
    if interface.exists():
        peers = {p.public_key: p for p in interface.peers()}
    now = time.time()
    rows: list[dict[str, Any]] = [
        {
            "id": "hub",
            "name": settings.name or socket.gethostname(),
            "role": "hub",
            "overlay_ip": settings.hub_ip,
            "online": interface.exists(),
            "state": "active",
            "last_handshake": None,
            "rx_bytes": None,
            "tx_bytes": None,
        }
    ]
    for node in nodes.list_nodes(client):
        if node.state != nodes.ACTIVE and not include_retired:
            continue
        peer = peers.get(node.wg_public_key)
        handshake = peer.latest_handshake if peer and peer.latest_handshake else None
        rows.append(
            {
                "id": node.id,
                "name": node.name,
                "role": node.role,
                "overlay_ip": node.overlay_ip,
                "state": node.state,
                "online": bool(
                    node.state == nodes.ACTIVE
                    and handshake
                    and now - handshake < ONLINE_HANDSHAKE_AGE
                ),
                "last_handshake": handshake,
                "rx_bytes": peer.rx_bytes if peer else 0,
                "tx_bytes": peer.tx_bytes if peer else 0,
                "cpu_cores": node.facts.get("cpu_cores"),
                "memory_bytes": node.facts.get("memory_bytes"),
                "enrolled_at": node.enrolled_at,
            }
        )
    return rows
