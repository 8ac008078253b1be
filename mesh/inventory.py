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
- ``direct_peers`` / ``relayed_peers``: the names of the member's peers it reaches direct,
  and through the hub, as its agent last reported them (mesh/pathreports.py keeps a report
  30 s, as node ids of known members: nothing a member made up is ever shown; a peer no
  longer registered shows as its id); ``path_report_age`` how old that report is. ``None``
  without a fresh report.
- ``relayed_bytes``: what the hub forwarded from the member so far (mesh/relaycount.py); the
  hub's row: all of it. ``None`` when the counters could not be read.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.core.names import HUB_NODE_ID
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import constants, nodes, relaycount
from hivemind_cluster.mesh.pathreports import reported_paths
from hivemind_cluster.mesh.wireguard import ONLINE_HANDSHAKE_AGE, PeerStatus, WireGuardInterface

Row = dict[str, Any]
# WireGuard public key -> the peer's statistics; None: the interface could not be read.
Peers = dict[str, PeerStatus] | None
log = logging.getLogger("hivemind.mesh.inventory")


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


@dataclass(frozen=True)
class Paths:
    """How members reach each other, as the hub knows it."""

    # Node id -> its agent's last report (``pathreports.reported_paths``); absent: none fresh.
    reported: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Overlay IP -> bytes the hub relayed from it (``relaycount.read``); None: unreadable.
    relayed: Mapping[str, int] | None = None
    # Node id -> name of the peers the reports name (the listed members' own come first).
    names: Mapping[str, str] = field(default_factory=dict)


def node_rows(
    settings: HubSettings,
    members: Iterable[Member],
    peers: Peers,
    now: float,
    hub: Row,
    paths: Paths = Paths(),
) -> list[Row]:
    """The hub's row (with the lister's ``hub`` columns), then one row per member."""
    listed = list(members)
    names = {**paths.names, **{m.id: m.name for m in listed}}
    return [
        hub_row(settings, peers is not None) | hub_paths(paths) | hub,
        *(member_row(m, peers, now) | member_paths(m, paths, names, now) for m in listed),
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


def hub_paths(paths: Paths) -> Row:
    """The hub reaches every member direct (it is their relay): it has no peers to list."""
    relayed = None if paths.relayed is None else sum(paths.relayed.values())
    return {
        "direct_peers": None,
        "relayed_peers": None,
        "relayed_bytes": relayed,
        "path_report_age": None,
    }


def member_paths(member: Member, paths: Paths, names: Mapping[str, str], now: float) -> Row:
    report = paths.reported.get(member.id)
    return {
        "direct_peers": peer_names(report, "direct", names),
        "relayed_peers": peer_names(report, "relayed", names),
        "relayed_bytes": None if paths.relayed is None else paths.relayed.get(member.overlay_ip, 0),
        "path_report_age": max(now - float(report["time"]), 0.0) if report is not None else None,
    }


def peer_names(
    report: Mapping[str, Any] | None, path: str, names: Mapping[str, str]
) -> list[str] | None:
    """The names of the peers ``report`` lists under ``path`` (a peer no longer
    registered: by its node id, which the hub gave it)."""
    if report is None:
        return None
    return sorted(names.get(node_id) or node_id for node_id in peer_ids(report, path))


def peer_ids(report: Mapping[str, Any], path: str) -> list[str]:
    return [str(node_id) for node_id in report.get(path) or ()]


def read_paths(db: redis.Redis, interface: str, node_ids: list[str]) -> Paths:
    """The members' reports from Redis, the names of the peers they list, and the hub's
    relay counters; counters that cannot be read are unknown (logged), the rest is shown."""
    try:
        relayed: dict[str, int] | None = relaycount.read(interface)
    except HiveMindError as exc:
        log.debug("relay counters unknown: %s", exc.message)
        relayed = None
    reported = reported_paths(db, node_ids)
    listed = set(node_ids)
    named = sorted(
        {i for r in reported.values() for p in ("direct", "relayed") for i in peer_ids(r, p)}
        - listed
    )
    return Paths(reported, relayed, registered_names(db, named))


def registered_names(db: redis.Redis, node_ids: list[str]) -> dict[str, str]:
    """node id -> name in the registry, for the ones it has (one round trip)."""
    if not node_ids:
        return {}
    pipe = db.pipeline(transaction=False)
    for node_id in node_ids:
        pipe.hget(constants.NODE.format(id=node_id), "name")
    found = pipe.execute(raise_on_error=False)
    return {i: n for i, n in zip(node_ids, found, strict=True) if isinstance(n, str) and n}


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
    paths = read_paths(client, settings.interface, [n.id for n in listed])
    return node_rows(settings, map(registered, listed), peers, time.time(), {}, paths)


def registered(node: nodes.Node) -> Member:
    facts = {
        "cpu_cores": node.facts.get("cpu_cores"),
        "memory_bytes": node.facts.get("memory_bytes"),
        "enrolled_at": node.enrolled_at,
    }
    return Member(
        node.id, node.name, node.role, node.overlay_ip, node.wg_public_key, node.state, None, facts
    )
