"""What the path keeper (agent/paths.py) works with: the peers the hub describes, its own
record of each peer it added, the interface it drives, and the probe it sends."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hivemind_cluster.mesh.wireguard import PeerStatus
from hivemind_cluster.protos import mesh_pb2

# The port the probe is sent to: "discard"; nothing needs to listen, the datagram only has
# to make WireGuard carry something (a refusal from the peer's firewall counts as an answer).
PROBE_PORT = 9


class PeerControl(Protocol):
    """What the keeper needs of a WireGuard interface (``mesh.wireguard.WireGuardInterface``)."""

    def peers(self) -> list[PeerStatus]: ...

    def set_peer(
        self,
        public_key: str,
        *,
        allowed_ips: tuple[str, ...] | None = None,
        endpoint: str = "",
        keepalive: int | None = None,
    ) -> None: ...

    def readd_peer(self, public_key: str, endpoint: str, keepalive: int) -> None: ...

    def readd_peers(self, peers: Sequence[tuple[str, str]], keepalive: int) -> None: ...

    def remove_peer(self, public_key: str) -> None: ...


@dataclass(frozen=True)
class KnownPeer:
    """Another member as the hub describes it."""

    node_id: str
    name: str
    role: str
    public_key: str
    overlay_ip: str
    endpoints: tuple[str, ...]  # "host:port" candidates, best first
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, message: mesh_pb2.MeshPeer) -> KnownPeer:
        return cls(
            node_id=message.node_id,
            name=message.name,
            role=message.role,
            public_key=message.public_key,
            overlay_ip=message.overlay_ip,
            endpoints=tuple(message.endpoints),
            labels=dict(message.labels),
        )


@dataclass
class Track:
    """The keeper's state for one peer it added."""

    peer: KnownPeer
    tried_at: float  # when the peer was last (re-)added
    rx_changed_at: float  # when it last showed a sign of life (not just initiations)
    pause: float  # between re-adds; doubles after each pass over the candidates
    retry_at: float = 0.0  # when a relayed peer is re-added next
    candidate: int = 0  # index of the endpoint candidate in use
    direct: bool = False
    rx_bytes: int = 0
    handshake: int = 0  # latest_handshake as of the last dump
    probed_at: float = 0.0
    status: PeerStatus | None = None  # as of the last dump (None: not seen since the re-add)
    failure: str = ""  # the last failure logged for this peer (logged once until it changes)


def send_probe(overlay_ip: str) -> None:
    """One byte over UDP to the peer's overlay address: something for WireGuard to carry."""
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
    ):
        probe.setblocking(False)
        probe.sendto(b"\0", (overlay_ip, PROBE_PORT))


def path_of(track: Track) -> mesh_pb2.PeerPath:
    status = track.status
    return mesh_pb2.PeerPath(
        public_key=track.peer.public_key,
        direct=track.direct,
        endpoint=status.endpoint if status else "",
        last_handshake=status.latest_handshake if status else 0,
        rx_bytes=status.rx_bytes if status else 0,
        tx_bytes=status.tx_bytes if status else 0,
    )
