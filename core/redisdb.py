"""Redis for every HiveMind server: connecting, loading a package's function libraries,
and calling their functions with Lua error replies turned into HiveMind errors.

Each package owns its libraries and their error tables (``mesh/store.py``,
``pool/store.py``); this module knows none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis

from hivemind_cluster.core import errors, names
from hivemind_cluster.core.settings import HubSettings

# "<CODE>" prefix of a Lua error reply -> (error class, message; ``{detail}`` fills in).
LuaErrors = dict[str, tuple[type[errors.HiveMindError], str]]


@dataclass(frozen=True)
class Library:
    """A Redis function library shipped in a package, with the errors its replies map to."""

    package: str
    filename: str
    errors: LuaErrors

    @cached_property
    def code(self) -> str:
        return resources.files(self.package).joinpath(self.filename).read_text()

    def error(self, exc: redis.ResponseError) -> Exception:
        """The HiveMindError for a ``"<CODE> <detail>"`` reply, or ``exc`` itself."""
        code, _, detail = str(exc).partition(" ")
        if code not in self.errors:
            return exc
        cls, message = self.errors[code]
        return cls(message.format(detail=detail))

    def call(self, client: redis.Redis, function: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.fcall(function, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            raise self.error(exc) from None

    async def acall(
        self, client: aioredis.Redis, function: str, keys: list[str], args: list[Any]
    ) -> Any:
        try:
            return await client.fcall(function, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            raise self.error(exc) from None


def connect(
    host: str, port: int, password: str | None, libraries: tuple[Library, ...] = ()
) -> redis.Redis:
    """A client (decoded replies) with ``libraries`` loaded; Unavailable if Redis is down."""
    client = redis.Redis(
        host=host,
        port=port,
        password=password,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=10,
    )
    try:
        reload_libraries(client, libraries)
        if not libraries:
            client.ping()  # fail here, not at the first command
    except redis.AuthenticationError:
        raise errors.PermissionDenied(f"Redis at {host}:{port} refused the password") from None
    except redis.ConnectionError as exc:
        raise errors.Unavailable(f"cannot reach Redis at {host}:{port} ({exc})") from None
    return client


def reload_libraries(client: redis.Redis, libraries: tuple[Library, ...]) -> None:
    """Load ``libraries`` (again: Redis keeps them in its AOF, but a newer version of the
    code replaces the one it kept)."""
    for library in libraries:
        client.function_load(library.code, replace=True)


async def load_libraries(client: aioredis.Redis, libraries: tuple[Library, ...]) -> None:
    """Load ``libraries`` over an asyncio client (replacing older versions)."""
    for library in libraries:
        await client.function_load(library.code, replace=True)


def connect_hub(settings: HubSettings, libraries: tuple[Library, ...] = ()) -> redis.Redis:
    """Connect to the running hub's Redis (on its overlay address)."""
    password_file = settings.path / names.REDIS_PASSWORD
    if not password_file.exists():
        raise errors.NotFound(f"{settings.state_dir} is not a hub state directory (run init)")
    password = password_file.read_text().strip()
    try:
        return connect(settings.hub_ip, settings.redis_port, password, libraries)
    except errors.Unavailable:
        raise errors.Unavailable(
            f"the hub is not running (no Redis on {settings.hub_ip}:{settings.redis_port}); "
            f"start it with: hivemind-hub up --state-dir {settings.state_dir}"
        ) from None


def dumps(value: Any) -> str:
    """JSON as the Lua functions store it: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
