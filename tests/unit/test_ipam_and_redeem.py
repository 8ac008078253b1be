"""IPAM and token redemption against a real Redis: atomic, never reused, all or nothing."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from hivemind_cluster.core.errors import AddressRangeExhausted, AlreadyExists, TokenRejected
from hivemind_cluster.core.keys import generate_wireguard_keypair
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants, ipam, nodes, store, tokens
from tests.support.scratch import sorted_set

pytestmark = pytest.mark.privileged
NET = ipaddress.IPv4Network("100.64.0.0/16")
PIN = "A" * 43


def test_fifty_concurrent_allocations_are_distinct(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    def allocate(_: int) -> str:
        own = store.connect(redis_server.bind, redis_server.port, redis_server.password)
        try:
            return ipam.allocate_ip(own, NET)
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=50) as pool:
        addresses = list(pool.map(allocate, range(50)))
    assert len(set(addresses)) == 50
    assert "100.64.0.1" not in addresses  # the hub's
    assert all(ipaddress.ip_address(a) in NET for a in addresses)


def test_exhaustion_is_a_clear_error_and_addresses_are_never_reused(client: redis.Redis) -> None:
    small = ipaddress.IPv4Network("100.64.7.0/29")  # 8 addresses: .2-.6 for nodes
    got = [ipam.allocate_ip(client, small) for _ in range(ipam.capacity(small))]
    assert got == [f"100.64.7.{i}" for i in range(2, 7)]
    with pytest.raises(AddressRangeExhausted, match="overlay address range exhausted"):
        ipam.allocate_ip(client, small)
    with pytest.raises(AddressRangeExhausted):
        ipam.allocate_ip(client, small)


def redeem(
    client: redis.Redis,
    token: tokens.JoinToken,
    secret: str | None = None,
    key: str | None = None,
    network: ipaddress.IPv4Network = NET,
) -> nodes.Node:
    return nodes.redeem(
        client,
        network,
        token.token_id,
        secret or token.secret,
        "host-a",
        key or generate_wireguard_keypair()[1],
        {"cpu_cores": 2},
    )


def snapshot(client: redis.Redis) -> tuple[object, ...]:
    return (
        client.get(constants.IPAM_NEXT),
        client.zcard(constants.NODES),
        client.hlen(constants.NODE_BY_IP),
        sorted(
            client.hget(f"hm:token:{t}", "uses_left") or ""
            for t in sorted_set(client, constants.TOKENS)
        ),
    )


def test_redeem_consumes_one_use_and_creates_the_node(client: redis.Redis) -> None:
    token = tokens.create_token(client, ["h:1"], PIN, role="operator", uses=2)
    node = redeem(client, token)
    assert (node.role, node.overlay_ip, node.state) == ("operator", "100.64.0.2", "enrolling")
    assert nodes.get_node(client, node.id).overlay_ip == "100.64.0.2"
    assert tokens.list_tokens(client)[0].uses_left == 1
    second = redeem(client, token)
    assert second.overlay_ip == "100.64.0.3"
    with pytest.raises(TokenRejected, match="no uses left"):
        redeem(client, token)


@pytest.mark.parametrize("case", ["unknown", "secret", "revoked", "expired", "used"])
def test_refused_tokens_change_nothing(client: redis.Redis, case: str) -> None:
    token = tokens.create_token(client, ["h:1"], PIN, ttl_seconds=3600)
    if case == "used":
        redeem(client, token)
    before = snapshot(client)
    secret = token.secret
    if case == "unknown":
        token = tokens.JoinToken(token.endpoints, PIN, "ffffffffffff", token.secret)
    elif case == "secret":
        secret = "x" * 43
    elif case == "revoked":
        tokens.revoke_token(client, token.token_id)
        before = snapshot(client)
    elif case == "expired":
        client.hset(f"hm:token:{token.token_id}", "expires_at", 1)
    messages = {
        "unknown": "not known",
        "secret": "does not match",
        "revoked": "revoked",
        "expired": "expired",
        "used": "no uses left",
    }
    with pytest.raises(TokenRejected, match=messages[case]):
        redeem(client, token, secret=secret)
    assert snapshot(client) == before


def test_a_wireguard_key_enrolls_once(client: redis.Redis) -> None:
    token = tokens.create_token(client, ["h:1"], PIN, uses=2)
    key = generate_wireguard_keypair()[1]
    redeem(client, token, key=key)
    before = snapshot(client)
    with pytest.raises(AlreadyExists):
        redeem(client, token, key=key)
    assert snapshot(client) == before


def test_revoked_node_address_is_not_reused(client: redis.Redis) -> None:
    token = tokens.create_token(client, ["h:1"], PIN, uses=2)
    first = redeem(client, token)
    nodes.activate(client, first.id, 1234, "pem")
    nodes.retire(client, nodes.get_node(client, first.id), nodes.REVOKED)
    assert nodes.is_serial_revoked(client, 1234)
    assert redeem(client, token).overlay_ip != first.overlay_ip


def test_exhausted_range_consumes_no_token_use(client: redis.Redis) -> None:
    tiny = ipaddress.IPv4Network("100.64.9.0/29")
    token = tokens.create_token(client, ["h:1"], PIN, uses=10)
    for _ in range(ipam.capacity(tiny)):
        redeem(client, token, network=tiny)
    before = snapshot(client)
    with pytest.raises(AddressRangeExhausted):
        redeem(client, token, network=tiny)
    assert snapshot(client) == before
