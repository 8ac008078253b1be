"""Log chunks with offsets in Redis (``hm_task_log``, ``hm_task_finish``): a chunk sent again
is stored once, missing output leaves a mark, the attempt that ended a task may still add
its late output, a superseded attempt may not (issue 13, point 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_cluster.core.errors import StaleAttempt
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool.taskstore import TaskStore
from tests.integration.test_taskstore import assigned_task, on_a_task_store, result, with_store

pytestmark = pytest.mark.privileged


async def entries(store: TaskStore, task_id: str) -> list[tuple[str, bytes]]:
    """(stream, data) of every entry of the task's log (the test output is ASCII)."""
    stored = await store.db.xrange(keys.TASK_LOGS.format(id=task_id))
    return [(values["stream"], values["data"].encode()) for _id, values in stored]


async def output(store: TaskStore, task_id: str) -> bytes:
    return b"".join(data for stream, data in await entries(store, task_id) if stream == "stdout")


async def system_lines(store: TaskStore, task_id: str) -> list[bytes]:
    return [data for stream, data in await entries(store, task_id) if stream == "system"]


@on_a_task_store
async def test_a_chunk_sent_again_is_stored_once(store: TaskStore) -> None:
    task = await assigned_task(store)
    assert await store.log(task.id, 1, "w1", "stdout", b"one\n", offset=0)
    assert await store.log(task.id, 1, "w1", "stdout", b"two\n", offset=4)
    # A reconnect sends both again, and a re-cut chunk overlapping the stored ones.
    assert not await store.log(task.id, 1, "w1", "stdout", b"one\n", offset=0)
    assert not await store.log(task.id, 1, "w1", "stdout", b"two\n", offset=4)
    assert await store.log(task.id, 1, "w1", "stdout", b"o\nthree\n", offset=6)
    assert await output(store, task.id) == b"one\ntwo\nthree\n"


@on_a_task_store
async def test_missing_output_leaves_a_mark_where_it_is_missing(store: TaskStore) -> None:
    task = await assigned_task(store)
    await store.log(task.id, 1, "w1", "stdout", b"first\n", offset=0)
    await store.log(task.id, 1, "w1", "stdout", b"later\n", offset=26)  # 20 bytes lost
    finished = result(task.id, 1)
    finished.log_bytes = 32 + 9  # the last 9 bytes never came
    assert await store.finish("w1", finished) == "succeeded"
    logged = await entries(store, task.id)
    assert logged[1:] == [
        ("stdout", b"first\n"),
        ("system", b"[output lost: 20 bytes of attempt 1 never reached the pool]"),
        ("stdout", b"later\n"),
        ("system", b"[output truncated: the last 9 bytes of attempt 1 never reached the pool]"),
        ("system", b"attempt 1 succeeded (exit code 0)"),
    ]


@on_a_task_store
async def test_a_whole_log_gets_no_mark(store: TaskStore) -> None:
    task = await assigned_task(store)
    await store.log(task.id, 1, "w1", "stdout", b"all of it\n", offset=0)
    finished = result(task.id, 1)
    finished.log_bytes = 10
    await store.finish("w1", finished)
    assert await system_lines(store, task.id) == [
        b"attempt 1 assigned to node w1",
        b"attempt 1 succeeded (exit code 0)",
    ]


@on_a_task_store
async def test_the_attempt_that_ended_the_task_may_add_late_output(store: TaskStore) -> None:
    task = await assigned_task(store)
    await store.log(task.id, 1, "w1", "stdout", b"before\n", offset=0)
    # The pool ended it itself (its agent away past the deadline): no log_bytes.
    assert await store.finish("w1", result(task.id, 1, status="timed_out")) == "timed_out"
    assert await store.log(task.id, 1, "w1", "stdout", b"after\n", offset=7)
    assert not await store.log(task.id, 1, "w1", "stdout", b"before\n", offset=0)
    assert await output(store, task.id) == b"before\nafter\n"
    with pytest.raises(StaleAttempt):  # the same attempt number from another node
        await store.log(task.id, 1, "w2", "stdout", b"forged\n", offset=13)
    assert b"forged" not in await output(store, task.id)


def test_a_superseded_attempt_may_not_add_output(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with_store(redis_server, tmp_path, superseded_output_is_refused)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, refusals  # said once per attempt, however many chunks
    assert (
        "attempt 1: output from w1 refused: attempt 1 on w1 is no longer current" in (refusals[0])
    )


async def superseded_output_is_refused(store: TaskStore) -> None:
    task = await assigned_task(store)
    await store.requeue(task.id, 1, "w1", "node w1 lost")
    await store.assign_many([(task.id, 2, "w2")])
    await store.log(task.id, 2, "w2", "stdout", b"second attempt\n", offset=0)
    assert await store.finish("w2", result(task.id, 2)) == "succeeded"
    for offset, chunk in ((0, b"late 1\n"), (7, b"late 2\n"), (None, b"late 3\n")):
        with pytest.raises(StaleAttempt):
            await store.log(task.id, 1, "w1", "stdout", chunk, offset=offset)
    assert await output(store, task.id) == b"second attempt\n"


@on_a_task_store
async def test_output_past_the_cap_still_counts_as_arrived(store: TaskStore) -> None:
    task = await assigned_task(store)  # the store caps logs at 100 bytes
    for n in range(5):
        await store.log(task.id, 1, "w1", "stdout", b"x" * 40, offset=40 * n)
    finished = result(task.id, 1)
    finished.log_bytes = 200
    await store.finish("w1", finished)
    marks = [line for line in await system_lines(store, task.id) if line.startswith(b"[")]
    assert marks == [b"[output truncated: this attempt wrote more than 100 bytes]"]


@on_a_task_store
async def test_the_pool_knows_which_reported_attempts_ended_their_task(store: TaskStore) -> None:
    ended, running, superseded = [await assigned_task(store) for _ in range(3)]
    await store.finish("w1", result(ended.id, 1))
    await store.requeue(superseded.id, 1, "w1", "node w1 lost")
    reported = [(ended.id, 1), (running.id, 1), (superseded.id, 1), (ended.id, 2)]
    assert await store.ended_by("w1", reported) == [(ended.id, 1)]
    assert await store.ended_by("w2", reported) == []
    assert await store.ended_by("w1", []) == []
