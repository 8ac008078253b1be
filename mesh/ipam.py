"""Overlay address allocation. Atomic (one Redis function call), never reuses an address."""

from __future__ import annotations

import ipaddress

import redis

from hivemind_cluster.mesh import constants, store


def function_args(network: ipaddress.IPv4Network) -> list[int]:
    """``(size, network_int)``: what the Lua allocator needs to know of the network."""
    return [network.num_addresses, int(network.network_address)]


def allocate_ip(client: redis.Redis, network: ipaddress.IPv4Network) -> str:
    """The next free address; raises AddressRangeExhausted when none is left."""
    return str(store.call(client, "hm_allocate_ip", [constants.IPAM_NEXT], function_args(network)))


def capacity(network: ipaddress.IPv4Network) -> int:
    """How many nodes the network can ever hold (hub, network and broadcast excluded)."""
    return max(network.num_addresses - 3, 0)
