"""The hub's peer distributor (mesh/peering.py) on a real Redis, members joining and leaving
as enrollment and revocation make them (``nodes.activate`` / ``nodes.retire``, which
publish ``MESH_CHANGED``): the full set then deltas, coalescing, nothing ever dropped (a
replica fed every update always equals the hub's view), revocation, the policy live and a
bad policy refused. The last test runs the real ``Mesh/Peers`` stream over mutual TLS
behind the pool's interceptor.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hivemind_cluster.client.channel import aio_channel
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import nodes, peering, peermembers, peerservice, tokens
from hivemind_cluster.mesh.peering import PeerDistributor, reported_paths
from hivemind_cluster.pool.service import create_server
from hivemind_cluster.protos import mesh_pb2, mesh_pb2_grpc
from tests.support.meshkit import (
    WAIT,
    Mesh,
    Replica,
    in_a_mesh,
    key_of,
    members_are,
    next_update,
    run_in_mesh,
)
from tests.support.poolkit import LOOPBACK, Cluster, fresh_pool
from tests.support.scratch import connect_with_every_library

pytestmark = pytest.mark.privileged
FULL_LOG = peering.LOG_ENTRIES  # the change log's length; 3 makes subscriptions fall behind it
GOOD_POLICY = '[[policy.allow]]\nfrom = ["worker"]\nto = ["label:tier=db"]\nports = ["tcp/5432"]\n'
BAD_POLICY = '\n\n[[policy.allow]]\nfrom = ["wroker"]\nto = ["worker"]\n'


@pytest.fixture(autouse=True)
def quick_endpoint_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member's endpoint changes 0.5 s apart, not 5 s: the tests wait less."""
    monkeypatch.setattr(peermembers, "ENDPOINT_INTERVAL", 0.5)


@in_a_mesh
async def test_full_set_then_only_what_changed(mesh: Mesh) -> None:
    mesh.join("a", "operator")
    mesh.join("b", labels={"tier": "db"})
    await mesh.settled(lambda hub: len(hub.members) == 2)
    subscription = mesh.distributor.subscribe("a")
    full = await next_update(subscription)
    assert full is not None and full.full
    assert [p.node_id for p in full.peers] == ["b"]
    assert dict(full.peers[0].labels) == {"tier": "db"}
    assert (full.self.node_id, full.self.role) == ("a", "operator")
    assert full.policy.digest == mesh.distributor.policy.digest() and full.keepalive == 25

    mesh.join("c")
    joined = await next_update(subscription)
    assert joined is not None and not joined.full and joined.revision > full.revision
    assert [p.node_id for p in joined.peers] == ["c"] and not joined.removed
    assert not joined.HasField("policy") and not joined.HasField("self")

    mesh.interface.seen[key_of("b")] = "198.51.100.7:51820"
    await mesh.distributor.report("b", mesh_pb2.MemberReport(endpoints=["10.0.0.2:51820"]))
    moved = await next_update(subscription)
    while moved is not None and list(moved.peers[0].endpoints) != [
        "198.51.100.7:51820",
        "10.0.0.2:51820",
    ]:
        moved = await next_update(subscription)  # the two sources may come one by one
    assert moved is not None and [p.node_id for p in moved.peers] == ["b"]


@in_a_mesh
async def test_many_changes_come_as_one_update_with_the_latest(mesh: Mesh) -> None:
    leaving, newcomers = [f"old{i}" for i in range(5)], [f"new{i}" for i in range(5)]
    for node_id in ["a", "b", *leaving]:
        mesh.join(node_id)
    await mesh.settled(lambda hub: len(hub.members) == 7)
    subscription = mesh.distributor.subscribe("a")
    first = await next_update(subscription)
    assert first is not None
    for node_id in newcomers:
        mesh.join(node_id)
    for node_id in leaving:
        mesh.revoke(node_id)
    for port in (1001, 1002, 1003):
        await mesh.distributor.report("b", mesh_pb2.MemberReport(endpoints=[f"10.0.0.2:{port}"]))
    await mesh.settled(lambda hub: sorted(hub.members) == sorted(["a", "b", *newcomers]))
    await mesh.settled(lambda hub: hub.members["b"].reported == ("10.0.0.2:1003",))  # its turn
    update = await next_update(subscription)
    assert update is not None and not update.full
    assert update.revision == mesh.distributor.revision >= first.revision + 2
    peers = {p.node_id: list(p.endpoints) for p in update.peers}
    assert sorted(peers) == ["b", *newcomers] and peers["b"] == ["10.0.0.2:1003"]
    assert sorted(update.removed) == [key_of(n) for n in leaving]


@pytest.mark.parametrize("log_entries", [FULL_LOG, 3])
def test_no_change_is_ever_dropped(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_entries: int
) -> None:
    """Random joins, revocations and endpoint reports, read at random moments: after every
    update the member's replica is exactly the hub's view. With a short change log the
    member falls behind it and gets full sets instead."""
    monkeypatch.setattr(peering, "LOG_ENTRIES", log_entries)
    monkeypatch.setattr(peermembers, "ENDPOINT_INTERVAL", 0.05)  # turns come and go quickly

    async def body(mesh: Mesh) -> None:
        chance = random.Random(15)
        mesh.join("me")
        subscription, replica, fulls = mesh.distributor.subscribe("me"), Replica(), 0
        alive: list[str] = []
        for step in range(300):
            action = chance.random()
            if action < 0.4 or not alive:
                mesh.join(f"m{step}")
                alive.append(f"m{step}")
            elif action < 0.6:
                mesh.revoke(alive.pop(chance.randrange(len(alive))))
            else:
                endpoint = f"10.1.{step // 250}.{step % 250}:{step + 1}"
                report = mesh_pb2.MemberReport(endpoints=[endpoint])
                await mesh.distributor.report(chance.choice(alive), report)
            if chance.random() < 0.3:
                # an endpoint's turn coming between the update and the comparison would
                # change the hub's view after the update was made: read once none waits
                await mesh.settled(members_are({"me", *alive}, turns_done=True))
                if mesh.distributor.revision == replica.revision:
                    continue  # what happened since cancels out (joined and left, say)
                update = await next_update(subscription)
                assert update is not None
                replica.apply(update)
                fulls += update.full
                assert replica.peers == mesh.view_of("me")
                assert replica.policy_digest == mesh.distributor.policy.digest()
        assert (fulls > 1) == (log_entries < FULL_LOG)

    run_in_mesh(redis_server, tmp_path, body)


@in_a_mesh
async def test_a_revoked_member_leaves_every_view_and_its_own_stream_ends(mesh: Mesh) -> None:
    mesh.join("a")
    mesh.join("b")
    await mesh.settled(lambda hub: len(hub.members) == 2)
    watcher, revoked = mesh.distributor.subscribe("a"), mesh.distributor.subscribe("b")
    assert await next_update(watcher) is not None and await next_update(revoked) is not None
    mesh.revoke("b")
    update = await next_update(watcher)
    assert update is not None and list(update.removed) == [key_of("b")] and not update.peers
    assert await next_update(revoked) is None
    assert await next_update(mesh.distributor.subscribe("b")) is None  # nor may it come back


@in_a_mesh
async def test_a_new_policy_runs_live_and_a_bad_one_is_refused(mesh: Mesh) -> None:
    mesh.join("a")
    mesh.join("b", labels={"tier": "db"})
    await mesh.settled(lambda hub: len(hub.members) == 2)
    subscription = mesh.distributor.subscribe("a")
    first = await next_update(subscription)
    assert first is not None
    default_digest, rules_before = first.policy.digest, mesh.hub_rules[-1]
    assert (await peering.running_policy(mesh.db) or {})["source"] == "default"

    mesh.policy_path.write_text(GOOD_POLICY)
    update = await next_update(subscription)
    assert update is not None and update.HasField("policy") and not update.peers
    assert update.policy.digest == mesh.distributor.policy.digest() != default_digest
    assert list(update.policy.rules[0].destinations) == ["label:tier=db"]
    recorded = await peering.running_policy(mesh.db)
    assert recorded is not None and recorded["digest"] == update.policy.digest
    assert recorded["source"] == str(mesh.policy_path) and recorded["rules"][0]["line"] == 1
    await mesh.settled(lambda hub: mesh.hub_rules[-1] != rules_before)
    assert "5432" in mesh.hub_rules[-1]

    revision, good_digest = mesh.distributor.revision, update.policy.digest
    mesh.policy_path.write_text(BAD_POLICY)
    await mesh.settled(
        lambda hub: "wroker" in (peering.running_policy_now(mesh.client) or {})["error"]
    )
    refused = peering.running_policy_now(mesh.client) or {}
    assert "hub.toml line 4" in refused["error"] and refused["digest"] == good_digest
    assert mesh.distributor.revision == revision  # nothing was sent: the running one stays
    assert mesh.distributor.policy.digest() == good_digest

    mesh.policy_path.write_text(BAD_POLICY.replace("wroker", "worker"))
    fixed = await next_update(subscription)
    assert fixed is not None and fixed.policy.digest not in (good_digest, "")
    assert (peering.running_policy_now(mesh.client) or {})["error"] == ""


def test_a_hub_starts_with_its_last_policy_when_hub_toml_is_refused(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.policy_path.write_text(GOOD_POLICY)
        await mesh.distributor.start()
        running = mesh.distributor.policy.digest()
        await mesh.distributor.stop()
        mesh.policy_path.write_text(BAD_POLICY)
        again = PeerDistributor(mesh.settings, mesh.db, None, mesh.policy_path)
        await again.start()
        await again.stop()
        assert again.policy.digest() == running and again.policy.rules[0].line == 1
        assert "wroker" in (await peering.running_policy(mesh.db) or {})["error"]

    run_in_mesh(redis_server, tmp_path, body, start=False)


def test_the_peer_stream_over_mutual_tls(redis_server: RedisServer, tmp_path: Path) -> None:
    """``Mesh/Peers`` on the pool's server: the interceptor names the caller, updates flow
    out, reports flow in (endpoints to the others, paths to Redis), and a revoked member's
    stream ends with PERMISSION_DENIED."""

    async def body(mesh: Mesh) -> None:
        cluster = Cluster(redis_server, tmp_path / "pool")
        cluster.pool = await fresh_pool(redis_server, cluster.settings, cluster.blob_db)
        await cluster.pool.start()
        cluster.server, cluster.port = await create_server(
            cluster.pool,
            f"{LOOPBACK}:0",
            cluster.server_cert + cluster.ca.pem,
            cluster.server_key,
            cluster.ca.pem,
            [lambda server: peerservice.add_to(server, mesh.distributor)],
        )
        try:
            await stream_scenario(mesh, cluster)
        finally:
            await cluster.stop()

    run_in_mesh(redis_server, tmp_path, body)


async def stream_scenario(mesh: Mesh, cluster: Cluster) -> None:
    identities = {n: await cluster.add_node(n, "worker") for n in ("a", "b")}
    for node_id in identities:  # as enrollment ends: active, with the message
        nodes.activate(mesh.client, node_id, 1, "pem")
    reports: dict[str, asyncio.Queue[mesh_pb2.MemberReport]] = {n: asyncio.Queue() for n in "ab"}

    async def sent(
        queue: asyncio.Queue[mesh_pb2.MemberReport],
    ) -> AsyncIterator[mesh_pb2.MemberReport]:
        while True:
            yield await queue.get()

    calls = {}
    for node_id, identity in identities.items():
        channel = aio_channel(identity)
        cluster.channels.append(channel)  # closed by cluster.stop()
        calls[node_id] = mesh_pb2_grpc.MeshStub(channel).Peers(sent(reports[node_id]))
    first_a = await asyncio.wait_for(calls["a"].read(), WAIT)
    first_b = await asyncio.wait_for(calls["b"].read(), WAIT)
    assert isinstance(first_a, mesh_pb2.PeerUpdate) and isinstance(first_b, mesh_pb2.PeerUpdate)
    assert first_a.full and first_a.self.node_id == "a"
    assert [p.node_id for p in first_a.peers] == ["b"]

    path = mesh_pb2.PeerPath(public_key="b", direct=True, endpoint="10.0.0.2:51820")
    report = mesh_pb2.MemberReport(
        applied_revision=first_a.revision, endpoints=["10.0.0.1:51820"], paths=[path]
    )
    await reports["a"].put(report)
    moved = await asyncio.wait_for(calls["b"].read(), WAIT)
    assert isinstance(moved, mesh_pb2.PeerUpdate)
    assert [(p.node_id, list(p.endpoints)) for p in moved.peers] == [("a", ["10.0.0.1:51820"])]
    itself = await asyncio.wait_for(calls["a"].read(), WAIT)  # a hears how others see it
    assert isinstance(itself, mesh_pb2.PeerUpdate) and not itself.peers
    assert list(itself.self.endpoints) == ["10.0.0.1:51820"]
    await mesh.settled(lambda hub: bool(reported_paths(mesh.client, ["a"])))
    recorded = reported_paths(mesh.client, ["a", "b"])
    assert list(recorded) == ["a"] and recorded["a"]["applied_revision"] == first_a.revision
    assert (recorded["a"]["direct"], recorded["a"]["relayed"]) == (["b"], [])
    assert recorded["a"]["endpoints"] == ["10.0.0.1:51820"]
    assert recorded["a"]["figures"] == {
        "b": {"endpoint": "10.0.0.2:51820", "last_handshake": 0, "rx_bytes": 0, "tx_bytes": 0}
    }

    mesh.revoke("b")
    gone = await asyncio.wait_for(calls["a"].read(), WAIT)
    assert isinstance(gone, mesh_pb2.PeerUpdate) and list(gone.removed) == ["b"]
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(calls["b"].read(), WAIT)
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
    calls["a"].cancel()


def test_labels_come_from_the_token_and_are_checked(redis_server: RedisServer) -> None:
    client = connect_with_every_library(redis_server)
    try:
        client.flushall()
        labels = tokens.parse_labels(["tier=db", "site=lab-1"])
        token = tokens.create_token(client, ["h:1"], "p" * 43, labels=labels)
        assert tokens.token_labels(client, token.token_id) == {"site": "lab-1", "tier": "db"}
        for bad in (
            ["tier"],
            ["tier=db", "tier=web"],
            ["ti er=db"],
            [f"k{i}=v" for i in range(17)],
        ):
            with pytest.raises(InvalidInput, match="label"):
                tokens.parse_labels(bad)
        with pytest.raises(InvalidInput, match="label"):
            tokens.create_token(client, ["h:1"], "p" * 43, labels={"tier": "d b"})
    finally:
        client.close()
