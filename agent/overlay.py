"""The agent's side of the overlay: bring its interface up from saved state, probe the hub."""

from __future__ import annotations

import errno
import socket
import time

from hivemind_cluster.agent.state import AgentSettings, Enrollment
from hivemind_cluster.core.names import WG_KEY
from hivemind_cluster.mesh.wireguard import PeerStatus, WireGuardInterface, select_backend


def bring_up(settings: AgentSettings, enrollment: Enrollment) -> WireGuardInterface:
    """Create the interface from saved state unless it is already up."""
    interface = WireGuardInterface(enrollment.interface)
    if not interface.exists():
        private_key = (settings.path / WG_KEY).read_text().strip()
        interface.up(
            select_backend(enrollment.backend),
            private_key,
            enrollment.address,
            None,
            [enrollment.hub_peer],
        )
    return interface


def hub_answers(hub_ip: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP packet to the hub's overlay address gets an answer.

    A connection refused is an answer too: the hub's RST came back through the tunnel.
    """
    try:
        with socket.create_connection((hub_ip, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED


def wait_until_hub_answers(enrollment: Enrollment, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub_answers(
            enrollment.hub_ip,
            enrollment.pool_port,
            timeout=min(1.0, max(deadline - time.monotonic(), 0.05)),
        ):
            return True
        time.sleep(0.02)
    return False


def hub_peer_status(enrollment: Enrollment) -> PeerStatus | None:
    interface = WireGuardInterface(enrollment.interface)
    if not interface.exists():
        return None
    for peer in interface.peers():
        if peer.public_key == enrollment.hub_public_key:
            return peer
    return None
