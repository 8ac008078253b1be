"""Connecting to the hub's Redis and calling the atomic functions in redis_functions.lua."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import redis

from hivemind_cluster.mesh import errors
from hivemind_cluster.mesh.settings import HubSettings

PASSWORD_FILE = "redis.password"

# "<CODE>" prefixes of Lua error replies -> the error users see.
_LUA_ERRORS: dict[str, tuple[type[errors.HiveMindError], str]] = {
    "TOKEN_UNKNOWN": (errors.TokenRejected, "join token is not known to this hub"),
    "TOKEN_SECRET": (errors.TokenRejected, "join token secret does not match (tampered token?)"),
    "TOKEN_REVOKED": (errors.TokenRejected, "join token has been revoked"),
    "TOKEN_EXPIRED": (errors.TokenRejected, "join token has expired"),
    "TOKEN_USED_UP": (errors.TokenRejected, "join token has no uses left"),
    "WG_KEY_TAKEN": (errors.AlreadyExists, "this WireGuard public key is already enrolled"),
    "EXHAUSTED": (errors.AddressRangeExhausted, "overlay address range exhausted"),
}


def connect(host: str, port: int, password: str | None) -> redis.Redis:
    """A client with the HiveMind functions loaded; raises Unavailable if Redis is down."""
    client = redis.Redis(
        host=host,
        port=port,
        password=password,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=10,
    )
    try:
        load_libraries(client)
    except redis.AuthenticationError:
        raise errors.PermissionDenied(f"Redis at {host}:{port} refused the password") from None
    except redis.ConnectionError as exc:
        raise errors.Unavailable(f"cannot reach Redis at {host}:{port} ({exc})") from None
    return client


def connect_hub(settings: HubSettings) -> redis.Redis:
    """Connect to the running hub's Redis (on its overlay address)."""
    password_file = settings.path / PASSWORD_FILE
    if not password_file.exists():
        raise errors.NotFound(f"{settings.state_dir} is not a hub state directory (run init)")
    try:
        return connect(settings.hub_ip, settings.redis_port, password_file.read_text().strip())
    except errors.Unavailable:
        raise errors.Unavailable(
            f"the hub is not running (no Redis on {settings.hub_ip}:{settings.redis_port}); "
            f"start it with: hivemind-hub up --state-dir {settings.state_dir}"
        ) from None


# The Lua libraries: the mesh's (tokens, IPAM), the pool's (tasks) and the ledger's (CPT).
LIBRARIES = (
    ("hivemind_cluster.mesh", "redis_functions.lua"),
    ("hivemind_cluster.pool", "redis_functions.lua"),
    ("hivemind_cluster.pool", "ledger.lua"),
)


def library_code(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text()


def load_libraries(client: redis.Redis) -> None:
    for package, name in LIBRARIES:
        client.function_load(library_code(package, name), replace=True)


def call(client: redis.Redis, function: str, keys: list[str], args: list[Any]) -> Any:
    try:
        return client.fcall(function, len(keys), *keys, *args)
    except redis.ResponseError as exc:
        raise lua_error(exc, _LUA_ERRORS) from None


LuaErrors = dict[str, tuple[type[errors.HiveMindError], str]]


def lua_error(exc: redis.ResponseError, table: LuaErrors) -> Exception:
    """The HiveMindError for a Lua ``"<CODE> <detail>"`` reply (``{detail}`` fills in), or exc."""
    code, _, detail = str(exc).partition(" ")
    if code not in table:
        return exc
    cls, message = table[code]
    return cls(message.format(detail=detail))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
