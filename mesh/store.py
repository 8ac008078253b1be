"""The mesh's Redis: its function library (tokens, IPAM, nodes: redis_functions.lua)."""

from __future__ import annotations

from typing import Any

import redis

from hivemind_cluster.core import errors, redisdb
from hivemind_cluster.core.settings import HubSettings

LIBRARY = redisdb.Library(
    "hivemind_cluster.mesh",
    "redis_functions.lua",
    {
        "TOKEN_UNKNOWN": (errors.TokenRejected, "join token is not known to this hub"),
        "TOKEN_SECRET": (
            errors.TokenRejected,
            "join token secret does not match (tampered token?)",
        ),
        "TOKEN_REVOKED": (errors.TokenRejected, "join token has been revoked"),
        "TOKEN_EXPIRED": (errors.TokenRejected, "join token has expired"),
        "TOKEN_USED_UP": (errors.TokenRejected, "join token has no uses left"),
        "WG_KEY_TAKEN": (errors.AlreadyExists, "this WireGuard public key is already enrolled"),
        "EXHAUSTED": (errors.AddressRangeExhausted, "overlay address range exhausted"),
    },
)


def connect(host: str, port: int, password: str | None) -> redis.Redis:
    """A client with the mesh's functions loaded; raises Unavailable if Redis is down."""
    return redisdb.connect(host, port, password, (LIBRARY,))


def connect_hub(settings: HubSettings) -> redis.Redis:
    return redisdb.connect_hub(settings, (LIBRARY,))


def call(client: redis.Redis, function: str, keys: list[str], args: list[Any]) -> Any:
    return LIBRARY.call(client, function, keys, args)
