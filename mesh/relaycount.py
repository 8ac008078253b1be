"""Relay counters: how many bytes the hub forwards for each member, by source address.

A member's traffic to a peer goes direct once their WireGuard handshake succeeds and through
the hub until then (docs/mesh.md). What the hub relays is what enters its WireGuard
interface and leaves by it again, so one nftables table counts exactly that: a forward
chain whose only statement puts the packet's source into the set ``relayed``, and the set
keeps a counter per element. It runs after the policy's forward chain (priority 10 > 0,
mesh/policyrules.py), so what the policy refuses never reaches it: it counts what the hub
really relayed. The chain never drops anything: with the table gone or broken, relaying
works as before.

The set is dynamic, so a source the hub was never told about is counted too; ``install``
and ``add`` put members in it beforehand so that a member that relayed nothing reads 0
rather than being absent. Counters start at 0 whenever the hub installs the table (as
WireGuard's rx/tx do when its interface comes up).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from hivemind_cluster.core import nftables
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.system import run

SET = "relayed"
# One element per member address: a default /16 overlay's worth. A full set counts no new
# source (nft adds nothing), and still drops nothing.
SET_SIZE = 65536
PRIORITY = 10  # after the policy's forward chain (0): a refused packet is not relayed


def relay_table(interface: str) -> str:
    return nftables.table_name("relay_" + interface)


def ruleset(interface: str, ips: Iterable[str]) -> str:
    """The whole table, with ``ips`` already in the set (sorted: same members, same text)."""
    known = sorted(set(ips))
    elements = f"\n    elements = {{ {', '.join(known)} }}" if known else ""
    return f"""table inet {relay_table(interface)} {{
  set {SET} {{
    type ipv4_addr
    size {SET_SIZE}
    flags dynamic
    counter{elements}
  }}
  chain forward {{
    type filter hook forward priority {PRIORITY}; policy accept;
    iifname "{interface}" oifname "{interface}" update @{SET} {{ ip saddr }}
  }}
}}
"""


def install(interface: str, ips: Iterable[str]) -> None:
    """Start counting what the hub relays on ``interface``, from 0, members ``ips`` listed."""
    nftables.load_table(
        relay_table(interface),
        ruleset(interface, ips),
        "nft is not installed, so the hub cannot count what it relays (install nftables: "
        "`make setup`)",
    )


def add(interface: str, ip: str) -> None:
    """List a new member (its counter at 0); one already listed keeps its count."""
    run(["nft", "add", "element", "inet", relay_table(interface), SET, f"{{ {ip} }}"])


def read(interface: str) -> dict[str, int]:
    """Bytes relayed so far, by source address. SystemFailure when the table is not there
    (the hub is not running, or nft is missing): unknown, which is not 0."""
    listed = run(["nft", "--json", "list", "set", "inet", relay_table(interface), SET])
    try:
        return counted_bytes(json.loads(listed))
    except (ValueError, TypeError, KeyError) as exc:
        raise SystemFailure(f"nft listed the relay counters in an unknown form: {exc}") from None


def counted_bytes(listed: dict[str, Any]) -> dict[str, int]:
    """``nft --json list set``'s elements as {address: bytes}."""
    found: dict[str, int] = {}
    for item in listed["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            entry = element.get("elem", element) if isinstance(element, dict) else element
            if isinstance(entry, str):  # an element without a counter yet
                found[entry] = 0
            else:
                found[str(entry["val"])] = int(entry.get("counter", {}).get("bytes", 0))
    return found


def remove(interface: str) -> None:
    nftables.delete_table(relay_table(interface))
