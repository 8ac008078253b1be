"""What the web app's views use, set up once by ``create_app``: ``services()``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from flask import current_app

from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.core.errors import NotFound
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh.wireguard import PeerStatus
from hivemind_cluster.web.users import UserStore


@dataclass
class Services:
    settings: HubSettings
    db: redis.Redis
    users: UserStore
    # To the pool with the hub's certificate (only the hub may act for user accounts).
    channel: grpc.Channel
    # The hub's WireGuard peers (handshakes, rx/tx) for the mesh page.
    wireguard_peers: Callable[[], list[PeerStatus]]
    # The hub's blobs (uploads, results): the same files and index the pool uses.
    make_blobs: Callable[[], BlobStore]

    @functools.cached_property
    def blobs(self) -> BlobStore:
        """Made at its first use, so that the web starts while the hub's Redis is down
        (the store loads its Lua library into Redis when made)."""
        return self.make_blobs()

    def pool(self, account: str = "") -> GrpcTaskClient:
        """The pool as ``account`` sees it: its tasks, its balance, paying from it."""
        return GrpcTaskClient(self.channel, account)

    def bundle_file(self, account: str, digest: str) -> Path | None:
        """The file of a bundle ``account`` uploaded (None for no bundle): the web reads its
        task.json to quote a price, and must not read another user's upload for that."""
        if not digest:
            return None
        if not self.blobs.holds(account, digest):
            raise NotFound(f"bundle {digest} is not on the hub: upload it first")
        return self.blobs.known_path(digest)


def services() -> Services:
    found: Services = current_app.extensions["hivemind"]
    return found
