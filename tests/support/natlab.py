"""The lab with NATs: hosts behind an endpoint-independent NAT ("eim") or a symmetric one,
and plain WireGuard (wireguard-go + wg, no HiveMind code) to state facts about them.

A natted host is two namespaces: the NAT, an ordinary lab host on the bridge (public
198.51.100.x), and the host itself behind it on a veth of its own (a /28 slice of
203.0.113.0/24), its default route via the NAT. The NAT masquerades what leaves its public
side and forwards inbound only what conntrack knows (established/related), like a home
router:

* ``eim``: ``masquerade``: Linux keeps the source port when it is free, so a socket keeps
  one public ip:port whoever it talks to (endpoint-independent mapping); inbound filtering
  is still per remote ip:port (conntrack). A peer that sends first opens its own pinhole.
* ``symmetric``: ``masquerade fully-random``: a new public port per destination, so the
  port the hub sees is useless to anyone else; only the NATted side can open a path, to a
  peer that answers wherever the packet came from (WireGuard roaming).

tests/integration/test_nat_lab.py states what that means for WireGuard; the e2e test
(tests/e2e/test_direct_mesh.py) relies on it. ``Lab.close()`` removes both namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.lab import Host, Lab, sh

NatKind = Literal["eim", "symmetric"]
PRIVATE = "203.0.113"
MASQUERADE: dict[NatKind, str] = {"eim": "masquerade", "symmetric": "masquerade fully-random"}
WIREGUARD_PORT = 51820
# wireguard-go retries a handshake every 5 s (REKEY_TIMEOUT): waiting this long for one
# that must not happen lets each side try at least three times.
NO_HANDSHAKE_SECONDS = 16.0
PROBE_PORT = 40404


@dataclass(frozen=True)
class Natted:
    """A host behind a NAT: ``host`` is where things run, ``nat`` its gateway (public)."""

    host: Host
    nat: Host
    kind: NatKind


class NatLab(Lab):
    """A ``Lab`` that can also put hosts behind NATs."""

    def __init__(self, workdir: Path, prefix: str | None = None) -> None:
        super().__init__(workdir, prefix)
        self.natted: list[Natted] = []

    def add_natted_host(self, name: str, kind: NatKind) -> Host:
        """A host behind a NAT of ``kind`` (its gateway is the public host ``<name>-nat``)."""
        nat = self.add_host(f"{name}-nat")
        slice_base = 16 * len(self.natted)  # 16 slices of /28 in 203.0.113.0/24
        if slice_base >= 256:
            raise AssertionError("the lab holds at most 16 natted hosts")
        gateway, private = f"{PRIVATE}.{slice_base + 1}", f"{PRIVATE}.{slice_base + 2}"
        index = len(self.hosts) + 1
        host = Host(self, name, f"{self.prefix}-{name}", private, index)
        sh("ip", "netns", "add", host.netns)
        self.hosts.append(host)
        outside, inside = f"{self.prefix}n{index}", f"{self.prefix}m{index}"
        sh(
            "ip",
            "link",
            "add",
            outside,
            "netns",
            nat.netns,
            "type",
            "veth",
            "peer",
            "name",
            inside,
            "netns",
            host.netns,
        )
        nat.run("ip", "address", "add", f"{gateway}/28", "dev", outside)
        nat.run("ip", "link", "set", outside, "up")
        nat.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        nat.run("nft", "-f", "-", input=nat_ruleset(self.public_interface(nat), outside, kind))
        host.run("ip", "link", "set", "lo", "up")
        host.run("ip", "address", "add", f"{private}/28", "dev", inside)
        host.run("ip", "link", "set", inside, "up")
        host.run("ip", "route", "add", "default", "via", gateway)
        self.natted.append(Natted(host, nat, kind))
        return host

    def public_interface(self, host: Host) -> str:
        """The name ``Lab.add_host`` gave the host's leg on the bridge."""
        return f"{self.prefix}i{host.index}"

    def nat_of(self, host: Host) -> Host:
        return next(n.nat for n in self.natted if n.host is host)


def nat_ruleset(public: str, private: str, kind: NatKind) -> str:
    return f"""
table ip lab_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{public}" {MASQUERADE[kind]}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{private}" accept
    }}
}}
"""


# -- NAT mappings, observed with plain UDP --------------------------------------------

OBSERVER = """
import json, socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.settimeout(20)
    data, (ip, port) = s.recvfrom(64)
    print(json.dumps([ip, port]), flush=True)
"""

SENDER = """
import socket, sys, time
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    for _ in range(40):
        for target in sys.argv[2:]:
            s.sendto(b"hello", (target, int(sys.argv[1])))
        time.sleep(0.05)
"""


def observed_sources(sender: Host, receivers: Iterable[Host], port: int = PROBE_PORT) -> list[str]:
    """The "ip:port" each receiver sees datagrams from ``sender``'s one UDP socket (bound
    to ``port``) come from: one mapping per destination, as a NAT made it."""
    receivers = list(receivers)
    observers = [
        subprocess.Popen(
            r.command([sys.executable, "-c", OBSERVER, str(port)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in receivers
    ]
    try:
        time.sleep(0.3)  # the observers bind (a datagram before that is resent anyway)
        sender.run(sys.executable, "-c", SENDER, str(port), *(r.ip for r in receivers))
        sources = []
        for observer in observers:
            out, err = observer.communicate(timeout=30)
            if observer.returncode != 0:
                raise AssertionError(f"the UDP observer failed: {err}")
            ip, seen_port = json.loads(out)
            sources.append(f"{ip}:{seen_port}")
        return sources
    finally:
        for observer in observers:
            if observer.poll() is None:
                observer.kill()
                observer.wait()


# -- plain WireGuard -----------------------------------------------------------------


@dataclass
class PlainWireGuard:
    """A wireguard-go interface in a lab host, configured with ``wg`` only."""

    host: Host
    address: str
    public_key: str
    port: int

    @property
    def interface(self) -> str:
        return self.host.wg_interface

    @property
    def underlay_endpoint(self) -> str:
        return f"{self.host.ip}:{self.port}"

    def add_peer(
        self,
        other: PlainWireGuard,
        allowed_ips: Iterable[str] = (),
        endpoint: str = "",
        keepalive: int = 0,
    ) -> None:
        """``other`` as a peer (no allowed-ips by default: it handshakes, carries nothing)."""
        argv = ["wg", "set", self.interface, "peer", other.public_key]
        allowed = ",".join(allowed_ips)
        if allowed:
            argv += ["allowed-ips", allowed]
        if endpoint:
            argv += ["endpoint", endpoint]
        if keepalive:
            argv += ["persistent-keepalive", str(keepalive)]
        self.host.run(*argv)

    def dump(self) -> dict[str, list[str]]:
        """``wg show IF dump`` peer lines by public key (fields after the key)."""
        lines = self.host.run("wg", "show", self.interface, "dump").stdout.splitlines()[1:]
        return {fields[0]: fields[1:] for fields in (line.split("\t") for line in lines)}

    def endpoint_of(self, other: PlainWireGuard) -> str:
        """Where this side sends to ``other`` now (roaming updates it)."""
        endpoint = self.dump().get(other.public_key, ["", "(none)"])[1]
        return "" if endpoint == "(none)" else endpoint

    def handshake_with(self, other: PlainWireGuard) -> int:
        """Unix seconds of the latest handshake with ``other``, 0 = never."""
        fields = self.dump().get(other.public_key)
        return int(fields[3]) if fields else 0


def plain_wireguard(host: Host, address: str, port: int = WIREGUARD_PORT) -> PlainWireGuard:
    """wireguard-go on ``host`` with a fresh key, ``address``/24, listening on ``port``.
    (It daemonises in the host's namespace: ``Lab.close()`` kills it and removes its socket.)"""
    env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    interface = host.wg_interface
    host.run("wireguard-go", interface, env=env)
    private_key = sh("wg", "genkey").stdout.strip()
    public_key = subprocess.run(
        ["wg", "pubkey"], input=private_key, capture_output=True, text=True, check=True
    ).stdout.strip()
    host.run(
        "sh",
        "-c",
        f"wg set {interface} listen-port {port} private-key /dev/stdin",
        input=private_key,
    )
    host.run("ip", "address", "add", f"{address}/24", "dev", interface)
    host.run("ip", "link", "set", interface, "up")
    return PlainWireGuard(host, address, public_key, port)


def wait_until(condition: Callable[[], bool], seconds: float, period: float = 0.2) -> bool:
    """Whether ``condition`` holds within ``seconds`` (polled; a last check at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period)
    return condition()


def handshakes(a: PlainWireGuard, b: PlainWireGuard, seconds: float = 20) -> bool:
    """Whether both ends see a handshake with each other within ``seconds``."""
    return wait_until(lambda: bool(a.handshake_with(b) and b.handshake_with(a)), seconds)
