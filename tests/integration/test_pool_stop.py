"""``Pool.stop`` ends in bounded time, warm then cold, also when a node is being lost as
the pool stops (real Redis, no gRPC: the nodes are silent ones the pool knows of).

Before: a reaper whose cancellation was swallowed (under Python 3.11 a library's
``wait_for`` or timeout racing the cancellation can; stopping while eight nodes were
being lost and redis-server dropped its clients showed it about once in a thousand
stops) went on reaping, and ``stop`` awaited it forever; a loss under way went on writing
to Redis after ``stop`` returned (one stop in seven), its node's lock already released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool.pool import Pool
from tests.support.poolkit import BUSYBOX_SPEC, fresh_pool

pytestmark = pytest.mark.privileged
NODES, TASKS_EACH = 3, 2
# Far above the ~0.1 s a stop takes here: only a hang (or a grace not kept) goes past it.
BOUND = 10.0


async def a_pool_with_tasks_on_silent_nodes(server: RedisServer, tmp_path: Path) -> Pool:
    """A started pool whose NODES nodes each run TASKS_EACH attempts and have been silent
    for longer than the heartbeat timeout: its next reaper pass loses them."""
    settings = HubSettings(state_dir=str(tmp_path), overlay="127.0.0.0/24")
    pool = await fresh_pool(server, settings)
    await pool.start()
    placements = []
    for index in range(NODES):
        node_id = f"n{index}"
        pool.scheduler.upsert_worker(node_id, node_id, Resources(8000, 1 << 34, 0))
        for _ in range(TASKS_EACH):
            record = await pool.tasks.submit(BUSYBOX_SPEC)
            pool.scheduler.allocate(record.id, node_id, record.request, 1)
            placements.append((record.id, 1, node_id))
    assert all(await pool.tasks.assign_many(placements))
    for index in range(NODES):
        pool.liveness.heard_from(f"n{index}", at=time.monotonic() - 1000)
    return pool


def on_a_fresh_pool(
    redis_server: RedisServer, tmp_path: Path, body: Callable[[Pool], Awaitable[None]]
) -> None:
    async def main() -> None:
        pool = await a_pool_with_tasks_on_silent_nodes(redis_server, tmp_path)
        try:
            await body(pool)
        finally:
            await pool.db.aclose()
            await pool.raw_db.aclose()

    asyncio.run(main())


async def stopped_within_bound(pool: Pool) -> float:
    """How long ``pool.stop()`` took; fails if it was still stopping after BOUND seconds
    (it is not cancelled: a cancellation may be what it fails to get through)."""
    started = time.monotonic()
    stopping = asyncio.create_task(pool.stop())
    done, _ = await asyncio.wait({stopping}, timeout=BOUND)
    assert done, f"Pool.stop() still waiting after {BOUND}s: {asyncio.all_tasks()}"
    stopping.result()
    return time.monotonic() - started


async def requeued_so_far(pool: Pool) -> int:
    """How many of the attempts were taken back from their nodes (queued again)."""
    return int(await pool.db.zcard(keys.QUEUE))


def test_a_reaper_that_swallows_its_cancellation_does_not_hang_stop(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async def body(pool: Pool) -> None:
        inside, swallowed = asyncio.Event(), list[bool]()

        async def newly_revoked() -> list[Any]:
            """A reaper call that loses the first cancellation it gets, as a 3.11
            ``wait_for`` whose inner call completes at the same moment does."""
            if not swallowed:
                inside.set()
                try:
                    await asyncio.sleep(BOUND * 2)
                except asyncio.CancelledError:
                    swallowed.append(True)
            return []

        pool.liveness.newly_revoked = newly_revoked  # type: ignore[method-assign]
        await asyncio.wait_for(inside.wait(), BOUND)
        took = await stopped_within_bound(pool)
        assert swallowed == [True]
        print(f"stop() with a swallowed cancellation took {took:.2f}s")

    on_a_fresh_pool(redis_server, tmp_path, body)


def test_a_loss_under_way_when_the_pool_stops_is_finished_before_stop_returns(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Warm: the loss got STOP_GRACE seconds, it needed less; nothing of it runs later."""

    async def body(pool: Pool) -> None:
        losing, _ = slowed_requeues(pool, seconds=0.3)
        await asyncio.wait_for(losing.wait(), BOUND)
        took = await stopped_within_bound(pool)
        when_stopped = await requeued_so_far(pool)
        await asyncio.sleep(1)
        # The node being lost is, whole; the others (not begun) wait for the next pool.
        assert when_stopped == await requeued_so_far(pool) == TASKS_EACH
        print(f"stop() waiting for a loss under way took {took:.2f}s")

    on_a_fresh_pool(redis_server, tmp_path, body)


def test_a_loss_longer_than_the_grace_is_cancelled_and_stop_returns(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Cold: a loss stuck past STOP_GRACE (Redis not answering) is cancelled, not left
    running behind a stopped pool."""

    async def body(pool: Pool) -> None:
        losing, cancelled = slowed_requeues(pool, seconds=BOUND * 3)
        await asyncio.wait_for(losing.wait(), BOUND)
        took = await stopped_within_bound(pool)
        assert cancelled == [True]  # by the time stop() returned
        print(f"stop() cancelling a stuck loss took {took:.2f}s")

    on_a_fresh_pool(redis_server, tmp_path, body)


def slowed_requeues(pool: Pool, seconds: float) -> tuple[asyncio.Event, list[bool]]:
    """Every requeue of the pool's task store waits ``seconds`` first. Returns an event
    set at the first one (a loss is under way) and a list that gets True for each
    requeue cancelled while it waited."""
    real, started, cancelled = pool.tasks.requeue, asyncio.Event(), list[bool]()

    async def slow_requeue(task_id: str, attempt: int, node_id: str, reason: str) -> str:
        started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return await real(task_id, attempt, node_id, reason)

    pool.tasks.requeue = slow_requeue  # type: ignore[method-assign]
    return started, cancelled
