"""PathKeeper on real wireguard-go in network namespaces: direct, relayed, direct again;
and a one-way loss (A's packets to B dropped, B's to A not) ending with both sides relayed.

Hosts ``a`` and ``b`` each have the "hub" host as their only configured peer, with the
whole overlay as allowed-ips; the hub forwards between its peers (plain wireguard-go and
ip_forward: the relay is WireGuard's, not HiveMind's). A keeper on each side adds the other
one. The keepers run in this process: ``wg`` reaches a namespace's wireguard-go through its
UAPI socket, which lives in the machine-wide /var/run/wireguard. Probes are sent from
inside the namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hivemind_cluster.agent.paths import PathKeeper
from hivemind_cluster.agent.peertrack import KnownPeer
from hivemind_cluster.mesh.wireguard import PeerStatus, WireGuardInterface
from tests.support.lab import Host, Lab, sh
from tests.support.prerequisites import require_root_network

pytestmark = pytest.mark.privileged

PORT = 51820
OVERLAY = "100.64.0.0/16"
BLOCK_TABLE = "hm_block_direct"


def keypair() -> tuple[str, str]:
    private = sh("wg", "genkey").stdout.strip()
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout.strip()
    return private, public


@dataclass
class Node:
    host: Host
    overlay_ip: str
    private_key: str
    public_key: str

    @property
    def interface(self) -> WireGuardInterface:
        return WireGuardInterface(self.host.wg_interface)

    def start_wireguard(self) -> None:
        name = self.host.wg_interface
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        self.host.run("wireguard-go", name, env=env)
        key = self.private_key + "\n"
        self.host.run(
            "wg", "set", name, "private-key", "/dev/stdin", "listen-port", str(PORT), input=key
        )
        self.host.run("ip", "address", "add", f"{self.overlay_ip}/16", "dev", name)
        self.host.run("ip", "link", "set", name, "up")

    def known(self) -> KnownPeer:
        return KnownPeer(
            node_id=self.host.name,
            name=self.host.name,
            role="worker",
            public_key=self.public_key,
            overlay_ip=self.overlay_ip,
            endpoints=(f"{self.host.ip}:{PORT}",),
        )

    def probe(self, overlay_ip: str) -> None:
        code = (
            f"from hivemind_cluster.agent.peertrack import send_probe; send_probe({overlay_ip!r})"
        )
        self.host.run(sys.executable, "-c", code)

    def dump(self) -> dict[str, PeerStatus]:
        return {peer.public_key: peer for peer in self.interface.peers()}


class Ticker:
    """Ticks a keeper every 0.25 s, as the agent does; an exception is kept for the test."""

    def __init__(self, keeper: PathKeeper) -> None:
        self.keeper = keeper
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stopping.wait(0.25):
            try:
                self.keeper.tick()
            except BaseException as error:  # reported by the test, not lost in a thread
                self.errors.append(error)
                return

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


@dataclass
class World:
    a: Node
    b: Node
    hub: Node
    keepers: dict[str, PathKeeper]
    tickers: list[Ticker]

    def direct(self, node: Node) -> bool:
        return all(path.direct for path in self.keepers[node.host.name].paths())

    def relayed(self, node: Node) -> bool:
        return not any(path.direct for path in self.keepers[node.host.name].paths())

    def wait_for(self, what: str, condition: Callable[[], bool], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            errors = [error for ticker in self.tickers for error in ticker.errors]
            assert not errors, errors
            assert time.monotonic() < deadline, f"never {what}: {self.describe()}"
            time.sleep(0.1)

    def describe(self) -> str:
        return "\n".join(
            node.host.run("wg", "show", node.host.wg_interface, "dump").stdout
            for node in (self.a, self.b, self.hub)
        )

    def hub_received_from(self, node: Node) -> int:
        return self.hub.dump()[node.public_key].rx_bytes

    def pings_flow(self, count: int = 10) -> None:
        self.a.host.run("ping", "-c", str(count), "-i", "0.05", "-s", "1000", self.b.overlay_ip)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    require_root_network()
    lab = Lab(tmp_path)
    tickers: list[Ticker] = []
    try:
        nodes = []
        for index, name in enumerate(("hub", "a", "b")):
            private, public = keypair()
            nodes.append(Node(lab.add_host(name), f"100.64.0.{index + 1}", private, public))
        hub, a, b = nodes
        for node in nodes:
            node.start_wireguard()
        hub.host.run("sysctl", "-w", "net.ipv4.ip_forward=1")
        for member in (a, b):
            hub.interface.set_peer(member.public_key, allowed_ips=(f"{member.overlay_ip}/32",))
            member.interface.set_peer(
                hub.public_key,
                allowed_ips=(OVERLAY,),
                endpoint=f"{hub.host.ip}:{PORT}",
                keepalive=25,
            )
        keepers = {
            node.host.name: PathKeeper(
                node.interface,
                hub.public_key,
                keepalive=5,
                probe=node.probe,
                own_public_key=node.public_key,
                own_address=f"{node.overlay_ip}/16",
                hub_ip=hub.overlay_ip,
            )
            for node in (a, b)
        }
        for keeper in keepers.values():
            keeper.allow_direct(True)  # the agent does once the member firewall is loaded
        keepers["a"].replace([b.known()])
        keepers["b"].replace([a.known()])
        tickers = [Ticker(keeper) for keeper in keepers.values()]
        yield World(a, b, hub, keepers, tickers)
    finally:
        for ticker in tickers:
            ticker.stop()
        lab.close()


def block_direct(node: Node, other: Node, both_ways: bool = True) -> None:
    """Drop the underlay UDP from ``node`` to ``other`` and, ``both_ways``, back (the hub's
    path stays open)."""
    commands = [
        f"add table inet {BLOCK_TABLE}",
        f"add chain inet {BLOCK_TABLE} out {{ type filter hook output priority 0; }}",
        f"add rule inet {BLOCK_TABLE} out ip daddr {other.host.ip} udp dport {PORT} drop",
    ]
    if both_ways:
        commands += [
            f"add chain inet {BLOCK_TABLE} in {{ type filter hook input priority 0; }}",
            f"add rule inet {BLOCK_TABLE} in ip saddr {other.host.ip} udp sport {PORT} drop",
        ]
    node.host.run("nft", "; ".join(commands))


def test_direct_then_relayed_when_blocked_then_direct_again(world: World) -> None:
    a, b, hub = world.a, world.b, world.hub
    assert a.interface.listen_port() == PORT
    world.pings_flow()  # through the hub: the keepers' peers have no allowed-ips yet or soon

    world.wait_for("direct", lambda: world.direct(a) and world.direct(b))
    assert a.dump()[b.public_key].allowed_ips == (f"{b.overlay_ip}/32",)
    assert b.dump()[a.public_key].allowed_ips == (f"{a.overlay_ip}/32",)
    assert a.dump()[hub.public_key].allowed_ips == (OVERLAY,)  # the hub peer is untouched
    relayed_before = world.hub_received_from(a)
    world.pings_flow()
    assert world.hub_received_from(a) - relayed_before < 10 * 1000  # the pings went direct

    block_direct(a, b)
    world.wait_for("relayed", lambda: world.relayed(a) and world.relayed(b))
    assert a.dump()[b.public_key].allowed_ips == ()
    relayed_before = world.hub_received_from(a)
    world.pings_flow()
    assert world.hub_received_from(a) - relayed_before >= 10 * 1000  # through the hub

    a.host.run("nft", "delete", "table", "inet", BLOCK_TABLE)
    world.wait_for("direct again", lambda: world.direct(a) and world.direct(b))
    relayed_before = world.hub_received_from(a)
    world.pings_flow()
    assert world.hub_received_from(a) - relayed_before < 10 * 1000

    world.keepers["a"].close()
    assert set(a.dump()) == {hub.public_key}


def test_a_one_way_loss_ends_with_both_sides_relayed(world: World) -> None:
    """B stops hearing A and re-adds it; B's handshake initiations still reach A, whose
    answers are lost. They must not keep A direct (for up to 180 s, until the handshake
    is too old): A goes relayed too, and traffic flows through the hub both ways."""
    a, b = world.a, world.b
    world.wait_for("direct", lambda: world.direct(a) and world.direct(b))
    block_direct(a, b, both_ways=False)
    world.wait_for("both relayed", lambda: world.relayed(a) and world.relayed(b), 120)
    relayed_before = world.hub_received_from(a)
    world.pings_flow()
    assert world.hub_received_from(a) - relayed_before >= 10 * 1000
    assert world.relayed(a) and world.relayed(b)  # no handshake completes: they stay so
