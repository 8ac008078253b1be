"""The policy's nft rules in a real kernel: three lab namespaces (a hub, a worker, an
operator) whose "overlay" addresses sit on their lab links, routed either directly
between the members or through the hub (which forwards in and out of the same interface,
as it does for WireGuard). Real TCP, UDP and ICMP show what is allowed and what is refused
— at once, with a reset or ICMP prohibited — before, while and after the rules are loaded
with ``policyrules.apply`` (run inside each namespace) and ``remove``. A fourth namespace
plays a container the operator publishes with DNAT (what a member forwards obeys the
policy too), and raw TCP segments show that only a SYN is reset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind_cluster.mesh import policyrules
from hivemind_cluster.mesh.policy import Party, Policy, Rule, default_policy
from tests.support.lab import Host, Lab
from tests.support.prerequisites import require

pytestmark = pytest.mark.privileged

SSH, POOL, REDIS, DNS = 2222, 50051, 6379, 5353  # stand-ins for a worker's and the hub's ports
PUBLISHED = 8080  # the operator's port DNATed to its "container"'s SSH
OVERLAY = {"hub": "100.64.0.1", "worker": "100.64.0.2", "operator": "100.64.0.3"}
SERVER = """
import socket, sys, threading
def serve_tcp(listener):
    while True:
        connection, _ = listener.accept()
        connection.sendall(b"hello")
        connection.close()
def serve_udp(sock):
    while True:
        _, peer = sock.recvfrom(64)
        sock.sendto(b"hello", peer)
for port in sys.argv[1:-1]:
    listener = socket.create_server(("0.0.0.0", int(port)))
    threading.Thread(target=serve_tcp, args=(listener,), daemon=True).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", int(sys.argv[-1])))
print("ready", flush=True)  # every socket is bound and listening
serve_udp(udp)
"""
CLIENT = """
import errno, socket, sys
address, protocol, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
sock = socket.socket(socket.AF_INET, kind)
sock.settimeout(5)
try:
    sock.connect((address, port))
    if protocol == "udp":
        sock.send(b"hi")
    print("open" if sock.recv(64) == b"hello" else "garbled")
except ConnectionRefusedError:
    print("reset" if protocol == "tcp" else "port unreachable")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print("prohibited" if exc.errno in (errno.EHOSTUNREACH, errno.EACCES) else repr(exc))
"""
# A bare ACK (as if in the middle of a connection nobody here saw open) then a SYN, as raw
# TCP segments from two source ports; prints what answered each. Both cross the same
# firewall in order, so the SYN's answer comes after any the ACK gets.
MID_STREAM = """
import socket, struct, sys
source, destination, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ACK, SYN, RST = 0x10, 0x02, 0x04
MID, NEW = 40001, 40002

def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def segment(sport, flags):
    header = struct.pack("!HHIIBBHHH", sport, port, 1000, 2000, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(source) + socket.inet_aton(destination)
    pseudo += struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    return header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]

sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
sock.bind((source, 0))
sock.settimeout(30)  # a safety net: the SYN is always answered (reset or accepted)
sock.sendto(segment(MID, ACK), (destination, 0))
sock.sendto(segment(NEW, SYN), (destination, 0))
answers = {}
while NEW not in answers:
    packet, (sender, _) = sock.recvfrom(65535)
    start = (packet[0] & 0x0F) * 4
    sport, dport = struct.unpack("!HH", packet[start : start + 4])
    if sender == destination and sport == port and dport in (MID, NEW):
        answers[dport] = "reset" if packet[start + 13] & RST else "answered"
print(answers.get(MID, "dropped"), answers[NEW])
"""


class World:
    """The three namespaces, their overlay addresses and listeners."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.hosts = {role: lab.add_host(role) for role in OVERLAY}
        self.parties = {
            role: Party("hub" if role == "hub" else f"n-{role}", role, role, ip)
            for role, ip in OVERLAY.items()
        }
        for role, host in self.hosts.items():
            host.run("ip", "address", "add", f"{OVERLAY[role]}/32", "dev", self.interface(role))
            listen(host, [SSH, POOL, REDIS], DNS)
        hub = self.hosts["hub"]
        hub.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for name in ("all", self.interface("hub")):
            hub.run("sysctl", "-qw", f"net.ipv4.conf.{name}.send_redirects=0")
        for role in ("worker", "operator"):
            hub.run("ip", "route", "add", OVERLAY[role], "dev", self.interface("hub"))
            # Like the hub's WireGuard peer: the whole overlay through the hub (relayed).
            self.route(role, OVERLAY["hub"])
            self.route(role, "100.64.0.0/24", via=OVERLAY["hub"])

    def interface(self, role: str) -> str:
        return f"{self.hosts[role].lab.prefix}i{self.hosts[role].index}"

    def route(self, role: str, address: str, via: str = "") -> None:
        gateway = ["via", via] if via else []
        device, source = self.interface(role), OVERLAY[role]
        self.hosts[role].run(
            "ip", "route", "replace", address, *gateway, "dev", device, "src", source
        )

    def direct(self) -> None:
        """Like a direct WireGuard path: a /32 to the other member beats the hub's /24."""
        self.route("worker", OVERLAY["operator"])
        self.route("operator", OVERLAY["worker"])

    def connect(self, source: str, destination: str, protocol: str, port: int) -> str:
        host = self.hosts[source]
        argv = (OVERLAY[destination], protocol, str(port))
        return host.run(sys.executable, "-c", CLIENT, *argv).stdout.strip()

    def mid_stream(self, source: str, destination: str, port: int) -> str:
        """``<what the bare ACK got> <what the SYN got>``, e.g. ``dropped reset``."""
        argv = (OVERLAY[source], OVERLAY[destination], str(port))
        return self.hosts[source].run(sys.executable, "-c", MID_STREAM, *argv).stdout.strip()

    def publish_a_container(self) -> None:
        """The operator DNATs its PUBLISHED port to SSH on a "container" host behind it (on
        the same link, as a routed network would be), like Docker's ``-p 8080:2222``."""
        operator, container = self.hosts["operator"], self.lab.add_host("container")
        listen(container, [SSH], DNS)
        container.run("ip", "route", "add", "100.64.0.0/24", "via", operator.ip)
        operator.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for name in ("all", self.interface("operator")):
            operator.run("sysctl", "-qw", f"net.ipv4.conf.{name}.send_redirects=0")
        nat = (
            "table ip published {\n  chain prerouting {\n"
            "    type nat hook prerouting priority -100;\n"
            f"    ip daddr {OVERLAY['operator']} tcp dport {PUBLISHED}"
            f" dnat to {container.ip}:{SSH}\n"
            "  }\n}\n"
        )
        operator.run("nft", "-f", "-", input=nat)

    def pings(self, source: str, destination: str) -> bool:
        return self.hosts[source].can_ping(OVERLAY[destination], timeout=2)

    def members_firewall(self, policy: Policy) -> None:
        for role in ("worker", "operator"):
            others = [p for r, p in self.parties.items() if r != role]
            text = policyrules.member_ruleset(
                self.interface(role), policy, self.parties[role], others
            )
            apply_in(self.hosts[role], self.interface(role), text)

    def hub_firewall(self, policy: Policy) -> None:
        members = [self.parties["worker"], self.parties["operator"]]
        text = policyrules.hub_ruleset(self.interface("hub"), policy, self.parties["hub"], members)
        apply_in(self.hosts["hub"], self.interface("hub"), text)


def listen(host: Host, tcp_ports: list[int], udp_port: int) -> None:
    argv = host.command([sys.executable, "-c", SERVER, *map(str, tcp_ports), str(udp_port)])
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    host.processes.append(process)  # Lab.close kills it
    assert process.stdout is not None and process.stdout.readline() == "ready\n"


def apply_in(host: Host, interface: str, ruleset: str) -> None:
    """``policyrules.apply`` itself, run inside the host's namespace."""
    code = "import sys; from hivemind_cluster.mesh import policyrules; "
    code += "policyrules.apply(sys.argv[1], sys.stdin.read())"
    host.run(sys.executable, "-c", code, interface, input=ruleset)


def remove_in(host: Host, interface: str) -> None:
    code = "import sys; from hivemind_cluster.mesh import policyrules; "
    host.run(sys.executable, "-c", code + "policyrules.remove(sys.argv[1])", interface)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    require(os.geteuid() == 0, "needs root (network namespaces, nft)")
    for tool in ("ip", "nft", "ping"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (make setup)")
    with Lab(tmp_path) as lab:  # deletes every namespace, also after a failure
        yield World(lab)


def test_members_enforce_the_policy_on_a_direct_path(world: World) -> None:
    world.direct()
    world.hub_firewall(Policy(()))  # the hub relays nothing: what passes below went direct
    assert world.connect("worker", "operator", "tcp", SSH) == "open"  # before: nothing refused
    world.members_firewall(default_policy(POOL, 5001))
    assert world.connect("operator", "worker", "tcp", SSH) == "open"
    assert world.connect("operator", "worker", "udp", DNS) == "open"
    assert world.connect("worker", "operator", "tcp", SSH) == "reset"
    assert world.connect("worker", "operator", "udp", DNS) == "prohibited"
    assert world.pings("worker", "operator") and world.pings("operator", "worker")
    for role in ("worker", "operator"):
        remove_in(world.hosts[role], world.interface(role))
    assert world.connect("worker", "operator", "tcp", SSH) == "open"


def test_the_hub_enforces_the_policy_on_what_it_relays_and_on_its_services(
    world: World,
) -> None:
    assert world.connect("worker", "operator", "tcp", SSH) == "open"  # relayed, unfiltered
    world.hub_firewall(default_policy(POOL, 5001))  # members have no rules of their own
    assert world.connect("operator", "worker", "tcp", SSH) == "open"
    assert world.connect("worker", "operator", "tcp", SSH) == "reset"
    assert world.connect("worker", "operator", "udp", DNS) == "prohibited"
    assert world.pings("worker", "operator")
    assert world.connect("worker", "hub", "tcp", POOL) == "open"
    assert world.connect("operator", "hub", "tcp", REDIS) == "reset"
    assert world.connect("worker", "hub", "udp", DNS) == "prohibited"


def test_a_new_policy_replaces_the_running_one_and_a_broken_ruleset_changes_nothing(
    world: World,
) -> None:
    world.direct()
    world.members_firewall(default_policy(POOL, 5001))
    assert world.connect("worker", "operator", "tcp", SSH) == "reset"
    let_workers_in = Rule(("worker",), ("operator",), (f"tcp/{SSH}",))
    world.members_firewall(Policy((let_workers_in,)))
    assert world.connect("worker", "operator", "tcp", SSH) == "open"
    assert world.connect("worker", "operator", "tcp", POOL) == "reset"
    assert not world.pings("worker", "operator")  # the new policy has no icmp rule
    operator = world.hosts["operator"]
    with pytest.raises(AssertionError, match="exited 1"):
        apply_in(operator, world.interface("operator"), "table inet broken { nonsense }")
    assert world.connect("worker", "operator", "tcp", SSH) == "open"  # still the last one
    listed = operator.run("nft", "list", "table", "inet", policyrules.policy_table(
        world.interface("operator")
    )).stdout  # fmt: skip
    assert f"ct original proto-dst {SSH} accept" in listed and 'comment "policy rule 1"' in listed


def test_a_member_enforces_the_policy_on_what_it_forwards_by_the_published_port(
    world: World,
) -> None:
    world.direct()
    world.publish_a_container()
    assert world.connect("worker", "operator", "tcp", PUBLISHED) == "open"  # before: forwarded
    world.members_firewall(default_policy(POOL, 5001))
    assert world.connect("worker", "operator", "tcp", PUBLISHED) == "reset"
    assert world.connect("operator", "worker", "tcp", SSH) == "open"
    # Judged by the port the worker asked for, not the container's (after DNAT).
    published = Rule(("worker",), ("operator",), (f"tcp/{PUBLISHED}",))
    world.members_firewall(Policy((published,)))
    assert world.connect("worker", "operator", "tcp", PUBLISHED) == "open"
    world.members_firewall(Policy((Rule(("worker",), ("operator",), (f"tcp/{SSH}",)),)))
    assert world.connect("worker", "operator", "tcp", SSH) == "open"  # the operator's own
    assert world.connect("worker", "operator", "tcp", PUBLISHED) == "reset"


def test_only_a_syn_is_reset_a_packet_from_mid_stream_is_dropped(world: World) -> None:
    world.hub_firewall(default_policy(POOL, 5001))  # relayed: the hub judges
    assert world.mid_stream("worker", "operator", SSH) == "dropped reset"
    # Allowed: it passes the hub, and the worker's own TCP resets what it knows nothing of.
    assert world.mid_stream("operator", "worker", SSH) == "reset answered"
    world.direct()
    world.members_firewall(default_policy(POOL, 5001))  # direct: the operator judges
    assert world.mid_stream("worker", "operator", SSH) == "dropped reset"
