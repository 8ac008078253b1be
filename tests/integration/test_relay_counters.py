"""The hub's relay counters (mesh/relaycount.py) in a real nft, in scratch namespaces.

Three lab hosts on one bridge (tests/support/lab.py): ``a`` and ``b`` in two subnets, ``hub``
routing between them on its one interface, as the real hub forwards between WireGuard
peers on its one WireGuard interface. The counters run in ``hub``'s namespace (a Python
child there calls the module), so this machine's own ruleset is never touched; the lab
deletes the namespaces, and the table with them, even when a test fails. With the hub's
policy table beside them, what the policy refuses is not counted (it was not relayed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.mesh import policyrules
from hivemind_cluster.mesh.policy import Party, Policy, Rule
from tests.support.lab import Host, Lab
from tests.support.prerequisites import require_root_network

pytestmark = pytest.mark.privileged
A_IP, B_IP, A_SECOND_IP = "100.72.1.2", "100.72.2.2", "100.72.1.3"
HUB_IPS = ("100.72.1.1", "100.72.2.1")
# One echo request (or reply) with 1000 bytes of data: 1000 + 8 (ICMP) + 20 (IP).
PACKET = 1028


class RoutedLab:
    def __init__(self, lab: Lab) -> None:
        self.a, self.b, self.hub = (lab.add_host(name) for name in ("a", "b", "hub"))
        self.interface = f"{lab.prefix}i3"  # the hub's one interface (lab.add_host's naming)
        for host, ips, gateway, other in (
            (self.a, (A_IP, A_SECOND_IP), HUB_IPS[0], "100.72.2.0/24"),
            (self.b, (B_IP,), HUB_IPS[1], "100.72.1.0/24"),
        ):
            for ip in ips:
                host.run("ip", "address", "add", f"{ip}/24", "dev", interface_of(host))
            host.run("ip", "route", "add", other, "via", gateway)
        for ip in HUB_IPS:
            self.hub.run("ip", "address", "add", f"{ip}/24", "dev", self.interface)
        for setting in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0"):
            self.hub.run("sysctl", "-qw", setting)
        self.hub.run("sysctl", "-qw", f"net.ipv4.conf.{self.interface}.send_redirects=0")

    def counters(self, call: str) -> Any:
        """``relaycount.<call>`` run in the hub's namespace: its result, or {"error": ...}."""
        code = (
            "import json\n"
            "from hivemind_cluster.core.errors import HiveMindError\n"
            "from hivemind_cluster.mesh import relaycount\n"
            "try:\n"
            f"    print(json.dumps(relaycount.{call}))\n"
            "except HiveMindError as exc:\n"
            "    print(json.dumps({'error': exc.message}))\n"
        )
        return json.loads(self.hub.run(sys.executable, "-c", code).stdout)

    def enforce(self, policy: Policy, members: list[Party]) -> None:
        """The hub's policy table for ``policy``, loaded in the hub's namespace."""
        hub = Party("hub", "hub", "hub", HUB_IPS[0])
        text = policyrules.hub_ruleset(self.interface, policy, hub, members)
        code = "import sys; from hivemind_cluster.mesh import policyrules; "
        code += "policyrules.apply(sys.argv[1], sys.stdin.read())"
        self.hub.run(sys.executable, "-c", code, self.interface, input=text)

    def read(self) -> dict[str, int]:
        found: dict[str, int] = self.counters(f"read({self.interface!r})")
        return found


def interface_of(host: Host) -> str:
    return f"{host.lab.prefix}i{host.index}"


def ping(host: Host, address: str, source: str = "", answered: bool = True) -> None:
    """Three echo requests of PACKET bytes (all answered, unless told otherwise)."""
    options = ["-I", source] if source else []
    host.run(
        *("ping", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-s", "1000", *options, address),
        check=answered,
    )


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[RoutedLab]:
    require_root_network()
    with Lab(tmp_path) as lab:
        yield RoutedLab(lab)


def test_relayed_bytes_are_counted_per_source_and_nothing_else(routed: RoutedLab) -> None:
    listed = [A_IP, B_IP, "100.72.9.9"]
    assert routed.counters(f"install({routed.interface!r}, {listed!r})") is None
    assert routed.read() == dict.fromkeys(listed, 0)

    ping(routed.a, B_IP)  # through the hub: requests from a, replies from b
    assert routed.read() == {A_IP: 3 * PACKET, B_IP: 3 * PACKET, "100.72.9.9": 0}

    ping(routed.a, HUB_IPS[0])  # to the hub itself: not relayed
    # From a source nobody listed, to an address nobody has: forwarded one way only, so
    # counted under its source (and the source is counted though not listed).
    ping(routed.a, "100.72.2.77", source=A_SECOND_IP, answered=False)
    assert routed.read() == {
        A_IP: 3 * PACKET,
        B_IP: 3 * PACKET,
        A_SECOND_IP: 3 * PACKET,
        "100.72.9.9": 0,
    }


def test_add_lists_a_member_and_keeps_counts_and_remove_ends_counting(
    routed: RoutedLab,
) -> None:
    assert routed.counters(f"install({routed.interface!r}, [])") is None
    ping(routed.a, B_IP)
    routed.counters(f"add({routed.interface!r}, {A_IP!r})")  # already counted: kept
    routed.counters(f"add({routed.interface!r}, '100.72.9.8')")
    assert routed.read() == {A_IP: 3 * PACKET, B_IP: 3 * PACKET, "100.72.9.8": 0}

    assert routed.counters(f"remove({routed.interface!r})") is None
    assert "error" in routed.read()  # unknown, not zeros
    ping(routed.a, B_IP)  # relaying goes on without the table


def test_what_the_policy_refuses_is_not_counted(routed: RoutedLab) -> None:
    operator = Party("n0a1b2c3d01", "a", "operator", A_IP)
    worker = Party("n0a1b2c3d02", "b", "worker", B_IP)
    routed.enforce(Policy((Rule(("operator",), ("worker",)),)), [operator, worker])
    assert routed.counters(f"install({routed.interface!r}, {[A_IP, B_IP]!r})") is None
    ping(routed.a, B_IP)  # the operator may: requests and their replies relayed
    ping(routed.b, A_IP, answered=False)  # the worker may not: refused at the hub
    assert routed.read() == {A_IP: 3 * PACKET, B_IP: 3 * PACKET}
