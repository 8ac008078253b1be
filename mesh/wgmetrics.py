"""WireGuard peers as per-node metric families, for the hub and for every member.

Read at scrape time from one ``wg show dump`` (``WireGuardInterface.peers``; the agent
reads it through its status page): each peer's handshake age and the bytes received from
and sent to it. A peer is labelled by the node id its key belongs to (a bounded set: the
cluster's members); keys no one knows are left out rather than labelled by the key. The
families are written by core/exposition.py: a hub has one series of each per member.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from hivemind_cluster.core.exposition import NodeFamily
from hivemind_cluster.mesh.wireguard import PeerStatus

NEVER = float("inf")  # a peer that never made a handshake: its age is +Inf


class PeerFigures(NamedTuple):
    node: str  # the peer's node id
    latest_handshake: float  # unix seconds, 0: never
    rx_bytes: int
    tx_bytes: int


def peer_figures(
    peers: Iterable[PeerStatus], node_of: Callable[[str], str | None]
) -> list[PeerFigures]:
    """``node_of(public key)``: the peer's node id, or None to leave it out."""
    figures = []
    for peer in peers:
        if (node := node_of(peer.public_key)) is not None:
            figures.append(PeerFigures(node, peer.latest_handshake, peer.rx_bytes, peer.tx_bytes))
    return figures


def wireguard_families(peers: Iterable[PeerFigures], now: float | None = None) -> list[NodeFamily]:
    now = time.time() if now is None else now
    listed = list(peers)
    ages = [
        (p.node, max(0.0, now - p.latest_handshake) if p.latest_handshake else NEVER)
        for p in listed
    ]
    return [
        NodeFamily(
            "hivemind_wireguard_handshake_age_seconds",
            "Since the last WireGuard handshake with each peer (+Inf: never)",
            "gauge",
            ages,
        ),
        NodeFamily(
            "hivemind_wireguard_received_bytes",
            "Bytes received from each peer",
            "counter",
            [(p.node, p.rx_bytes) for p in listed],
        ),
        NodeFamily(
            "hivemind_wireguard_sent_bytes",
            "Bytes sent to each peer",
            "counter",
            [(p.node, p.tx_bytes) for p in listed],
        ),
    ]


def relayed_family(relayed: Mapping[str, int], node_of_ip: Mapping[str, str]) -> NodeFamily:
    """The hub's relay counters (mesh/relaycount.py: overlay IP -> bytes it relayed from
    that member to another), by node id."""
    values = [(node_of_ip[ip], count) for ip, count in sorted(relayed.items()) if ip in node_of_ip]
    return NodeFamily(
        "hivemind_relayed_bytes",
        "Bytes the hub relayed from each member to another member",
        "counter",
        values,
    )
