"""Task transitions in Redis (pool/redis_functions.lua): fencing, exactly once, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hivemind_cluster.core.errors import Conflict, InvalidInput, StaleAttempt
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.pool import operations
from hivemind_cluster.pool.auth import Caller
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.pool.taskstore import TaskStore
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import (
    BUSYBOX_SPEC,
    Cluster,
    ScriptedExecutor,
    echo,
    in_a_cluster,
    pytest_decorator,
    run_in_cluster,
)

pytestmark = pytest.mark.privileged

SPEC = BUSYBOX_SPEC


def with_store(
    redis_server: RedisServer, tmp_path: Path, body: Callable[[TaskStore], Awaitable[None]]
) -> None:
    """``body(store)`` on the task store of a started pool that caps logs at 100 bytes."""

    async def on_its_store(cluster: Cluster) -> None:
        assert cluster.pool is not None
        await body(cluster.pool.tasks)

    run_in_cluster(redis_server, tmp_path, on_its_store, log_cap_bytes=100)


# ``@on_a_task_store`` over ``async def test_…(store)``: the test, run by ``with_store``.
on_a_task_store = pytest_decorator(with_store)


async def assigned_task(store: TaskStore) -> TaskRecord:
    """A new task with its attempt 1 assigned to node w1: where most transitions start."""
    task = await store.submit(SPEC)
    assert await store.assign_many([(task.id, 1, "w1")]) == [True]
    return task


GOOD, EVIL = "sha256:" + "a" * 64, "sha256:" + "e" * 64  # result digests


def result(task_id: str, attempt: int, status: str = "succeeded", out: str = "") -> pb.TaskResult:
    return pb.TaskResult(
        task_id=task_id,
        attempt=attempt,
        status=status,
        exit_code=0,
        output_digest=out,
        output_size=100 if out else 0,
    )


@on_a_task_store
async def test_concurrent_results_for_one_attempt_complete_it_exactly_once(
    store: TaskStore,
) -> None:
    task = await assigned_task(store)
    outcomes = await asyncio.gather(
        *(store.finish("w1", result(task.id, 1)) for _ in range(10)), return_exceptions=True
    )
    assert outcomes.count("succeeded") == 1
    assert all(isinstance(o, StaleAttempt) for o in outcomes if o != "succeeded")
    assert len(await store.attempts(task.id)) == 1


@on_a_task_store
async def test_a_superseded_attempt_can_neither_log_start_nor_finish(store: TaskStore) -> None:
    task = await assigned_task(store)
    assert await store.requeue(task.id, 1, "w1", "node w1 lost") == "lost"
    for stale in (
        store.start(task.id, 1, "w1"),
        store.log(task.id, 1, "w1", "stdout", b"late"),
        store.finish("w1", result(task.id, 1, out=EVIL)),
    ):
        with pytest.raises(StaleAttempt):
            await stale
    assert (await store.get(task.id)).output == ""  # the late result is not recorded
    # The wrong node cannot report attempt 2 either, and assigning attempt 1 again fails.
    assert await store.assign_many([(task.id, 1, "w2")]) == [False]
    assert await store.assign_many([(task.id, 2, "w2")]) == [True]
    with pytest.raises(StaleAttempt):
        await store.finish("w1", result(task.id, 2))
    assert await store.finish("w2", result(task.id, 2)) == "succeeded"


@on_a_task_store
async def test_the_last_attempt_lost_fails_the_task_and_cancel_wins_over_requeue(
    store: TaskStore,
) -> None:
    task = await assigned_task(store)
    await store.requeue(task.id, 1, "w1", "node w1 lost")
    await store.assign_many([(task.id, 2, "w1")])
    assert await store.requeue(task.id, 2, "w1", "node w1 lost") == "failed"
    assert "last attempt (2 of 2)" in (await store.get(task.id)).error

    other = await store.submit(SPEC)
    await store.assign_many([(other.id, 1, "w1")])
    assert (await store.cancel(other.id))[0] == "cancelling"
    assert await store.requeue(other.id, 1, "w1", "node w1 lost") == "cancelled"
    with pytest.raises(Conflict):
        await store.cancel(other.id)


@on_a_task_store
async def test_logs_are_capped_with_one_truncation_mark(store: TaskStore) -> None:
    task = await assigned_task(store)
    stored = [await store.log(task.id, 1, "w1", "stdout", b"x" * 40) for _ in range(5)]
    assert stored == [True, True, False, False, False]
    assert store.log_cap_bytes == 100


@on_a_task_store
async def test_an_idempotency_key_returns_the_first_task(store: TaskStore) -> None:
    first = await store.submit(SPEC, idempotency_key="k1")
    again = await store.submit(SPEC, idempotency_key="k1")
    other = await store.submit(SPEC, idempotency_key="k2")
    assert first.id == again.id != other.id
    assert len(await store.queued()) == 2


@in_a_cluster()
async def test_queued_and_running_tasks_survive_a_pool_restart(cluster: Cluster) -> None:
    assert cluster.pool is not None
    operator = Caller("op", "op", "operator", "127.0.0.1", 1)
    request = pb.SubmitRequest(image="hivemind/busybox:latest", command=["echo", "hi"])
    task = await operations.submit(cluster.pool, operator, request)
    await cluster.restart_pool()
    assert task.id in cluster.pool.scheduler.pending
    await cluster.start_worker("w1", ScriptedExecutor(echo))
    stub = await cluster.operator_stub()
    assert (await cluster.wait_status(stub, task.id, {"succeeded"})).attempt == 1


@on_a_task_store
async def test_a_repeated_or_forged_result_never_touches_the_accepted_output(
    store: TaskStore,
) -> None:
    task = await assigned_task(store)
    assert await store.finish("w1", result(task.id, 1, out=GOOD)) == "succeeded"
    with pytest.raises(StaleAttempt):
        await store.finish("w1", result(task.id, 1, out=EVIL))
    accepted = await store.get(task.id)
    assert (accepted.output, accepted.output_bytes) == (GOOD, 100)
    assert accepted.to_proto().output_digest == GOOD
    with pytest.raises(InvalidInput):
        await store.finish("w1", result("../../escape", 1, out=GOOD))


@on_a_task_store
async def test_interrupted_attempts_do_not_use_up_attempts(store: TaskStore) -> None:
    task = await store.submit(SPEC)  # max_attempts 2
    for attempt in (1, 2, 3):
        await store.assign_many([(task.id, attempt, "w1")])
        status = await store.finish("w1", result(task.id, attempt, status="interrupted"))
        assert status == "queued"
    await store.assign_many([(task.id, 4, "w1")])
    assert await store.requeue(task.id, 4, "w1", "node w1 lost") == "lost"
    await store.assign_many([(task.id, 5, "w1")])
    assert await store.requeue(task.id, 5, "w1", "node w1 lost") == "failed"
