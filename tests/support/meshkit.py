"""The hub's peer distributor (mesh/peering.py) on a real Redis, as the integration tests
drive it: members registered and retired as enrollment and revocation do, a fake hub
WireGuard for the endpoints it sees, and a member's replica fed every update."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from redis.typing import EncodableT, FieldT

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants, nodes
from hivemind_cluster.mesh.peering import PeerDistributor, Subscription
from hivemind_cluster.mesh.wireguard import PeerStatus, WireGuardInterface
from hivemind_cluster.protos import mesh_pb2
from tests.support.poolkit import pytest_decorator, redis_client
from tests.support.scratch import connect_with_every_library

WAIT = 20  # seconds before a test waiting for something gives up (never a timed assertion)


class FakeHubInterface(WireGuardInterface):
    """The hub's WireGuard as the distributor reads it: the endpoints it has seen."""

    def __init__(self) -> None:
        super().__init__("hmtest0")
        self.seen: dict[str, str] = {}

    def peers(self) -> list[PeerStatus]:
        return [PeerStatus(key, endpoint, (), 0, 0, 0) for key, endpoint in self.seen.items()]


class Mesh:
    """A distributor on a flushed Redis; members registered and retired as the hub does."""

    def __init__(self, server: RedisServer, directory: Path) -> None:
        self.client = connect_with_every_library(server)
        self.client.flushall()
        self.db = redis_client(server)
        self.settings = HubSettings(state_dir=str(directory), overlay="100.64.0.0/16")
        self.policy_path = directory / "hub.toml"
        self.hub_rules: list[str] = []
        self.interface = FakeHubInterface()
        self.distributor = PeerDistributor(
            self.settings, self.db, self.interface, self.policy_path, self.hub_rules.append
        )
        self.joined = 0

    def join(self, node_id: str, role: str = "worker", labels: Mapping[str, str] = {}) -> None:
        self.joined += 1
        record: dict[FieldT, EncodableT] = {
            "id": node_id,
            "name": f"name-{node_id}",
            "role": role,
            "overlay_ip": f"100.64.{self.joined // 200}.{10 + self.joined % 200}",
            "wg_public_key": key_of(node_id),
            "state": "enrolling",
            "enrolled_at": time.time(),
        }
        self.client.hset(constants.NODE.format(id=node_id), mapping=record)
        self.client.zadd(constants.NODES, {node_id: self.joined})
        nodes.activate(self.client, node_id, 1000 + self.joined, "pem", labels)

    def revoke(self, node_id: str) -> None:
        nodes.retire(self.client, nodes.get_node(self.client, node_id), nodes.REVOKED)

    def view_of(self, node_id: str) -> dict[str, mesh_pb2.MeshPeer]:
        """What ``node_id`` should know: every other active member, as the hub has it."""
        hub = self.distributor
        return {m.public_key: m.to_proto() for i, m in hub.members.items() if i != node_id}

    async def settled(self, condition: Callable[[PeerDistributor], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not condition(self.distributor):
            assert time.monotonic() < deadline, "the distributor never got there"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.distributor.stop()
        await self.db.aclose()
        self.client.close()


def key_of(node_id: str) -> str:
    return f"key-{node_id}"


def members_are(node_ids: set[str], turns_done: bool = False) -> Callable[[PeerDistributor], bool]:
    """The distributor has exactly ``node_ids`` (and, with ``turns_done``, no endpoint
    change waits for its turn)."""
    return lambda hub: set(hub.members) == node_ids and not (turns_done and hub.turns.waiting)


async def next_update(subscription: Subscription) -> mesh_pb2.PeerUpdate | None:
    return await asyncio.wait_for(subscription.next_update(), WAIT)


class Replica:
    """A member's copy of its peers, fed every update as the agent applies them."""

    def __init__(self) -> None:
        self.peers: dict[str, mesh_pb2.MeshPeer] = {}
        self.revision = 0
        self.policy_digest = ""

    def apply(self, update: mesh_pb2.PeerUpdate) -> None:
        assert update.revision > self.revision
        self.revision = update.revision
        if update.full:
            self.peers = {}
        for peer in update.peers:
            self.peers[peer.public_key] = peer
        for key in update.removed:
            self.peers.pop(key, None)
        if update.HasField("policy"):
            self.policy_digest = update.policy.digest


MeshBody = Callable[[Mesh], Awaitable[None]]


def run_in_mesh(server: RedisServer, directory: Path, body: MeshBody, start: bool = True) -> None:
    async def main() -> None:
        mesh = Mesh(server, directory)
        try:
            if start:
                await mesh.distributor.start()
            await body(mesh)
        finally:
            await mesh.close()

    asyncio.run(main())


in_a_mesh = pytest_decorator(run_in_mesh)
