"""What the web app's views use, set up once by ``create_app``: ``services()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import redis
from flask import current_app

from hivemind_cluster.client.grpcclient import GrpcTaskClient
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

    def pool(self, account: str = "") -> GrpcTaskClient:
        """The pool as ``account`` sees it: its tasks, its balance, paying from it."""
        return GrpcTaskClient(self.channel, account)


def services() -> Services:
    found: Services = current_app.extensions["hivemind"]
    return found
