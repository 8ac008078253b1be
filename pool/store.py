"""The pool's Redis: its function libraries, the tasks (redis_functions.lua), the CPT
ledger (ledger.lua) and tasks' usage over their runs (taskusage.lua), and connections
with them loaded."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from hivemind_cluster.core import errors, redisdb
from hivemind_cluster.core.settings import HubSettings

TASKS = redisdb.Library(
    "hivemind_cluster.pool",
    "redis_functions.lua",
    {
        "NOT_FOUND": (errors.NotFound, "no such task"),
        "STALE": (errors.StaleAttempt, "{detail}"),
        "FINISHED": (errors.Conflict, "{detail}"),
    },
)
LEDGER = redisdb.Library(
    "hivemind_cluster.pool",
    "ledger.lua",
    {
        "INVALID": (errors.InvalidInput, "{detail}"),
        "NO_ACCOUNT": (errors.NotFound, "no account {detail}"),
        "INSUFFICIENT": (errors.Conflict, "insufficient balance in {detail}"),
        "NO_SUPPLY": (errors.Conflict, "{detail} (start the hub once)"),
    },
)
# A task's usage over its run (pool/taskusage.py); its replies are numbers, never errors.
TASK_USAGE = redisdb.Library("hivemind_cluster.pool", "taskusage.lua", {})
LIBRARIES = (TASKS, LEDGER, TASK_USAGE)


def connect(host: str, port: int, password: str | None) -> redis.Redis:
    """A synchronous client with the pool's functions loaded (CLI, tests, benchmarks)."""
    return redisdb.connect(host, port, password, LIBRARIES)


def connect_hub(settings: HubSettings) -> redis.Redis:
    return redisdb.connect_hub(settings, LIBRARIES)


async def load_libraries(client: aioredis.Redis) -> None:
    await redisdb.load_libraries(client, LIBRARIES)
