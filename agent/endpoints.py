"""This host's own endpoint candidates: where another member might reach its WireGuard.

The hub tells every member the address it sees for a peer (behind a NAT: the NAT's
mapping); these are the addresses the peer itself has, for members on the same LAN or
with a route to it. Each candidate is ``ip:port``, the port being the WireGuard
interface's listen port. Left out: loopback, link-local addresses, the WireGuard
interface itself, other point-to-point tunnels (nothing outside this host reaches
them through WireGuard's UDP) and container bridges and veths (Docker's, libvirt's, CNI's),
whose addresses are private to this host.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import psutil

# Interfaces whose addresses are this host's own business.
HOST_ONLY_PREFIXES = ("docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "vxlan")
# ARPHRD_NONE: tun devices (wireguard-go, other VPNs) and kernel WireGuard interfaces.
ARPHRD_NONE = 65534
ARPHRD_LOOPBACK = 772


class Address(Protocol):
    """What ``psutil.net_if_addrs()`` gives per address (``family`` and ``address``)."""

    @property
    def family(self) -> int: ...

    @property
    def address(self) -> str: ...


def link_type(interface: str) -> int:
    """The interface's ARPHRD type from sysfs (1 = Ethernet; -1 when unknown)."""
    try:
        return int(Path("/sys/class/net", interface, "type").read_text())
    except (OSError, ValueError):
        return -1


def reachable_interface(name: str, wireguard: str, kind: int) -> bool:
    """Whether another machine may reach this host through an address of ``name``."""
    if name == wireguard or name == "lo" or name.startswith(HOST_ONLY_PREFIXES):
        return False
    return kind not in (ARPHRD_NONE, ARPHRD_LOOPBACK)


def usable_ipv4(text: str) -> bool:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_link_local or address.is_unspecified)


def candidate_addresses(
    addresses: Mapping[str, Sequence[Address]],
    wireguard: str,
    kind_of: Mapping[str, int] | None = None,
) -> list[str]:
    """The usable IPv4 addresses of ``addresses`` (by interface), sorted and unique.
    ``kind_of`` gives each interface's link type (default: read from sysfs)."""
    found: set[str] = set()
    for name, entries in addresses.items():
        kind = kind_of[name] if kind_of is not None and name in kind_of else link_type(name)
        if not reachable_interface(name, wireguard, kind):
            continue
        found.update(
            entry.address
            for entry in entries
            if entry.family == socket.AF_INET and usable_ipv4(entry.address)
        )
    return sorted(found, key=ipaddress.IPv4Address)


def own_endpoints(wireguard: str, listen_port: int) -> list[str]:
    """``ip:port`` for each address of this host another member may reach (none while the
    interface has no listen port)."""
    if listen_port <= 0:
        return []
    addresses = candidate_addresses(psutil.net_if_addrs(), wireguard)
    return [f"{address}:{listen_port}" for address in addresses]
