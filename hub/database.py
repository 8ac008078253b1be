"""The hub's Redis as a supervised child (hub/supervisor.py), and the pool that lives on it.

When Redis dies, the pool is closed (its agents' streams end, its server stops answering),
Redis is started again from its AOF on the same address, and the pool is opened anew:
its in-memory mirror rebuilt from Redis and the settlements that failed meanwhile retried,
exactly as after a hub restart. Agents reconnect to it by themselves; every other Redis
client (enrollment, the web, the CLIs) reconnects at its next command. The Lua function
libraries are kept in the AOF; they are loaded again all the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import redis

from hivemind_cluster.blobs import index as blob_index
from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.core import names
from hivemind_cluster.core.redisdb import reload_libraries
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.reclaim import UpRecord
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import store
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.service import create_server as create_pool_server

GRACE_SECONDS = 2


@dataclass
class PoolCredentials:
    redis_password: str
    server_cert: bytes
    server_key: bytes
    ca_pem: bytes


class PoolRuntime:
    """The pool and its gRPC server, opened over the hub's Redis, closed before it goes.
    Its blob store (``blobs``, on a Redis client of its own) is set once Redis runs, and
    outlives restarts of Redis: its client reconnects by itself."""

    def __init__(
        self,
        settings: HubSettings,
        credentials: PoolCredentials,
        extra: Sequence[Callable[[grpc.aio.Server], None]] = (),
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.extra = extra  # other services on the pool's server (the mesh's peer stream)
        self.blobs: BlobStore | None = None
        self.pool: Pool | None = None
        self.server: grpc.aio.Server | None = None

    async def open(self) -> None:
        found = self.credentials
        if self.blobs is None:
            raise RuntimeError("the pool's blob store is set before the pool opens")
        self.pool = await Pool.open(self.settings, found.redis_password, self.blobs)
        self.server, _ = await create_pool_server(
            self.pool,
            self.settings.pool_address,
            found.server_cert,
            found.server_key,
            found.ca_pem,
            self.extra,
        )

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop(GRACE_SECONDS)
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()


class HubDatabase:
    """A supervisor's ``Child``: the Redis server, and what to redo when it restarts."""

    name = "redis-server"

    def __init__(
        self, settings: HubSettings, password: str, pool: PoolRuntime, record: UpRecord
    ) -> None:
        data_dir = settings.path / names.REDIS_DIR
        self.server = RedisServer(
            data_dir, settings.hub_ip, settings.redis_port, password, tied=True
        )
        self.pool = pool
        self.record = record
        self.log_hint = str(data_dir / "redis.log")
        self.client: redis.Redis | None = None

    def start(self) -> redis.Redis:
        """At ``up``: Redis, and a client of it with the mesh's library."""
        self._spawn()
        self.server.wait_until_ready()
        self.client = store.connect(self.server.bind, self.server.port, self.server.password)
        return self.client

    def _spawn(self) -> None:
        """Start redis-server and note it in up.json, for a successor to reclaim."""
        self.server.spawn()
        self.record.note(redis=self.server.identity())

    def exit_code(self) -> int | None:
        return self.server.exit_code()

    async def restart(self) -> None:
        await self.pool.close()
        self._spawn()  # from the event loop's thread: it must die with the hub
        try:
            await asyncio.to_thread(self.server.wait_until_ready)
            if self.client is not None:
                libraries = (store.LIBRARY, blob_index.LIBRARY)
                await asyncio.to_thread(reload_libraries, self.client, libraries)
            await self.pool.open()
        except BaseException:
            await self.pool.close()
            self.server.stop()  # so the supervisor sees it down, and tries again
            raise

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.server.stop()
