"""Throwaway things a test or a benchmark makes for itself: a free loopback port, a
redis-server of its own (alone or in a temporary directory) and what is in it, a zip
archive in memory."""

from __future__ import annotations

import io
import secrets
import socket
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import redis

from hivemind_cluster.core import redisdb
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import store as mesh_store
from hivemind_cluster.pool import store as pool_store

# The hub's Redis has them all: the mesh's (tokens, IPAM, nodes) and the pool's (tasks, CPT).
EVERY_LIBRARY = (mesh_store.LIBRARY, *pool_store.LIBRARIES)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def scratch_redis(directory: Path) -> Iterator[RedisServer]:
    """A started redis-server of its own (data in ``directory``, a free port on 127.0.0.1, a
    random password), stopped on the way out."""
    server = RedisServer(directory, "127.0.0.1", free_port(), secrets.token_hex(16))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def scratch_dir_with_redis(prefix: str) -> Iterator[tuple[Path, RedisServer]]:
    """A temporary directory (its name starts with ``prefix``) and a ``scratch_redis`` with
    its data in ``redis/`` there: where a benchmark works; both go on the way out."""
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        scratch_redis(Path(tmp) / "redis") as server,
    ):
        yield Path(tmp), server


def connect_with_every_library(server: RedisServer) -> redis.Redis:
    """A client of ``server`` with every HiveMind function library loaded, as on a hub."""
    return redisdb.connect(server.bind, server.port, server.password, EVERY_LIBRARY)


def sorted_set(client: redis.Redis, key: str) -> list[str]:
    """The members of a sorted set, lowest score first. Every client here decodes replies
    (``decode_responses=True``), which redis-py's types cannot tell: they say bytes or str."""
    return cast(list[str], client.zrange(key, 0, -1))


def zip_of(files: Mapping[str, str | bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive of ``name -> content`` (stored as is unless ``compression`` says)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()
