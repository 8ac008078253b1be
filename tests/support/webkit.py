"""The web app over a real pool, for tests: ``WebCluster`` runs a ``poolkit.Cluster`` in a
background thread (its own event loop), and builds ``create_app`` against it with the
hub's identity, exactly as ``hivemind-hub web`` does, minus the state directory.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import redis
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from hivemind_cluster.client.channel import Identity, sync_channel
from hivemind_cluster.core.names import HUB_NODE_ID
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import store
from hivemind_cluster.mesh.wireguard import PeerStatus
from hivemind_cluster.web import create_app
from hivemind_cluster.web.users import Limits
from tests.support.poolkit import LOOPBACK, Cluster, ScriptedExecutor, echo

T = TypeVar("T")
# Cheap hashing for tests only (the real default costs ~50 ms and 64 MiB per hash).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"


class WebCluster:
    def __init__(self, redis_server: RedisServer, state_dir: Path, **settings: Any) -> None:
        self.cluster = Cluster(redis_server, state_dir, **settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.peers: list[PeerStatus] = []
        self.channels: list[grpc.Channel] = []
        self._db: redis.Redis | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the pool's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self.cluster.start())

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        if self._db is not None:
            self._db.close()
        try:
            self.run(self.cluster.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def start_worker(self, node_id: str, behaviour: Callable[..., Any] = echo) -> None:
        self.run(self.cluster.start_worker(node_id, ScriptedExecutor(behaviour)))

    def hub_identity(self) -> Identity:
        cert, key = self.cluster.ca.issue_client_certificate(HUB_NODE_ID, LOOPBACK)
        return Identity(
            HUB_NODE_ID, cert, key, self.cluster.ca.pem, f"{LOOPBACK}:{self.cluster.port}"
        )

    def db(self) -> redis.Redis:
        """One client for the tests and the apps (its connection pool is thread-safe)."""
        if self._db is None:
            server = self.cluster.redis_server
            self._db = store.connect(server.bind, server.port, server.password)
        return self._db

    def app(self, **config: Any) -> Flask:
        self.channels.append(sync_channel(self.hub_identity()))
        return create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "test",
                "SETTINGS": self.cluster.settings,
                "REDIS": self.db(),
                "CHANNEL": self.channels[-1],
                "PASSWORD_HASHER": FAST_HASHER,
                # Every test user comes from 127.0.0.1: only the per-user limit applies.
                "LIMITS": Limits(logins_per_address=10**6, registrations_per_hour=10**6),
                "WIREGUARD_PEERS": lambda: self.peers,
                **config,
            }
        )


@contextmanager
def web_cluster(
    redis_server: RedisServer, state_dir: Path, **settings: Any
) -> Iterator[WebCluster]:
    world = WebCluster(redis_server, state_dir, **settings)
    world.start()
    try:
        yield world
    finally:
        world.stop()


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    """The CSRF token a page's form carries (the session cookie goes with the client)."""
    page = client.get(path).get_data(as_text=True)
    match = CSRF_FIELD.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def register_in_browser(client: FlaskClient, username: str, password: str = PASSWORD) -> None:
    token = csrf_token(client, "/register")
    reply = client.post(
        "/register",
        data={"username": username, "password": password, "confirm": password, "csrf_token": token},
    )
    assert reply.status_code == 302, reply.get_data(as_text=True)


def api_login(client: FlaskClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Register through the API and return the Authorization header of a fresh token."""
    registered = client.post("/api/v1/register", json={"username": username, "password": password})
    assert registered.status_code in (201, 409), registered.get_json()
    reply = client.post("/api/v1/tokens", json={"username": username, "password": password})
    assert reply.status_code == 201, reply.get_json()
    return {"Authorization": f"Bearer {reply.get_json()['token']}"}
