"""The peers as ``hivemind-agent status`` and the status page show them.

Names and roles come from ``<state>/peers.json`` (written by the service's PeerSync,
agent/peers.py, each time it applies an update); the path and its figures from WireGuard
itself (one ``wg show dump``), so they are current even when the service is not running.
A peer is direct when WireGuard routes its overlay address to it (allowed-ips
``<ip>/32``), relayed (through the hub) otherwise.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.mesh.wireguard import PeerStatus, WireGuardInterface

log = logging.getLogger("hivemind.agent.peers")
PEERS_FILE = "peers.json"
DIRECT, RELAYED = "direct", "relayed"


@dataclass(frozen=True)
class PeerRow:
    name: str
    role: str
    overlay_ip: str
    path: str  # DIRECT | RELAYED
    endpoint: str  # the endpoint WireGuard uses ("" when none)
    last_handshake: float | None  # unix seconds
    rx_bytes: int
    tx_bytes: int
    node_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def known_peers(state_dir: Path) -> dict[str, Any]:
    """``peers.json`` (``{}`` before the service first applied the hub's peers)."""
    try:
        document = json.loads((state_dir / PEERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def known_revision(known: dict[str, Any]) -> int:
    """The revision ``peers.json`` was written at (0: none, or not a number)."""
    revision = known.get("revision", 0)
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else 0


def interface_peers(interface: str) -> list[PeerStatus] | None:
    """The interface's peers from one ``wg show dump``; None when it is not up."""
    wireguard = WireGuardInterface(interface)
    try:
        return wireguard.peers() if wireguard.exists() else None
    except (HiveMindError, OSError, ValueError, subprocess.SubprocessError) as exc:
        # The interface vanished between the check and `wg show`, or `wg` misbehaved.
        log.debug("no peers from %s: %s", interface, exc)
        return None


def peer_rows(known: dict[str, Any], wireguard: Iterable[PeerStatus] | None) -> list[PeerRow]:
    """One row per known peer, by name; peers WireGuard does not have show as relayed
    with no figures (the service is down, or it is adding them)."""
    by_key = {p.public_key: p for p in wireguard or ()}
    rows = []
    listed = known.get("peers")
    for peer in listed if isinstance(listed, list) else ():
        if not isinstance(peer, dict):
            continue  # a hand-edited or damaged file: show what can be shown
        status = by_key.get(str(peer.get("public_key", "")))
        overlay_ip = str(peer.get("overlay_ip", ""))
        direct = status is not None and f"{overlay_ip}/32" in status.allowed_ips
        rows.append(
            PeerRow(
                name=str(peer.get("name", "")),
                role=str(peer.get("role", "")),
                overlay_ip=overlay_ip,
                path=DIRECT if direct else RELAYED,
                endpoint=status.endpoint if status else "",
                last_handshake=float(status.latest_handshake)
                if status and status.latest_handshake
                else None,
                rx_bytes=status.rx_bytes if status else 0,
                tx_bytes=status.tx_bytes if status else 0,
                node_id=str(peer.get("node_id", "")),
            )
        )
    return sorted(rows, key=lambda r: (r.name, r.overlay_ip))


def hub_status(wireguard: Iterable[PeerStatus] | None, hub_public_key: str) -> PeerStatus | None:
    return next((p for p in wireguard or () if p.public_key == hub_public_key), None)
