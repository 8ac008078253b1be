"""What the web app's views use, set up once by ``create_app``: ``services()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from flask import current_app

from hivemind_cluster.mesh.settings import HubSettings
from hivemind_cluster.mesh.wireguard import PeerStatus
from hivemind_cluster.web.gateway import Gateway
from hivemind_cluster.web.users import UserStore


@dataclass
class Services:
    settings: HubSettings
    db: redis.Redis
    users: UserStore
    pool: Gateway
    # The hub's WireGuard peers (handshakes, rx/tx) for the mesh page.
    wireguard_peers: Callable[[], list[PeerStatus]]


def services() -> Services:
    found: Services = current_app.extensions["hivemind"]
    return found
