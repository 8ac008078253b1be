"""What operators ask of the pool: submit (paying into escrow), see, cancel, follow logs.

Functions over the ``Pool``, reaching its parts through their methods (the member cache
for what could ever fit, dispatch to queue and withdraw, liveness to reach an agent); the
gRPC ``Tasks`` service calls them with the authenticated caller. Operators see and act on
their own tasks, the hub on all.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from hivemind_cluster.core.errors import InvalidInput, NotFound, Unschedulable
from hivemind_cluster.core.units import MAX_AMOUNT
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.spec import TaskData, check_submission, data_refs
from hivemind_cluster.model.states import FINAL_STATES, MAX_ROWS, PENDING_STATES, TaskState
from hivemind_cluster.pool.auth import Caller, acting_for
from hivemind_cluster.pool.messages import cancel_message
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.pool.taskdata import in_store_thread
from hivemind_cluster.pool.taskstore import LogRecord, new_task_id
from hivemind_cluster.protos import pool_pb2 as pb

LOG_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


async def submit(pool: Pool, caller: Caller, request: pb.SubmitRequest) -> TaskRecord:
    """``submit_new``'s task."""
    record, _new = await submit_new(pool, caller, request)
    return record


async def submit_new(
    pool: Pool, caller: Caller, request: pb.SubmitRequest
) -> tuple[TaskRecord, bool]:
    """Check a submission, pin its data, hold its price cap in escrow, store and queue it;
    also whether it is a new task (False: an earlier one with the same idempotency key).

    Its data first: every input the hub serves must be held by the owner (an upload of
    theirs), else NotFound and nothing is queued or held in escrow."""
    owner = acting_for(caller, request.owner, "submit tasks on behalf of someone else")
    refs = data_refs(request, pool.settings)
    task_id = new_task_id()

    async def pin_check_and_store() -> TaskRecord:
        data = await pool.data.pin(task_id, owner, refs)
        try:
            record = await check_and_store(pool, request, owner, task_id, data)
        except BaseException:
            await pool.data.unpin(task_id, owner, data)
            raise
        if record.id != task_id:  # an earlier submission with this key: not a new task
            await pool.data.unpin(task_id, owner, data)
        return record

    # Shielded: a caller that goes away mid-call must not leave money, pins or a task halfway.
    record = await asyncio.shield(pin_check_and_store())
    return record, record.id == task_id


async def check_and_store(
    pool: Pool, request: pb.SubmitRequest, owner: str, task_id: str, data: TaskData
) -> TaskRecord:
    """The checked task, paid into escrow, stored and queued (its data is pinned)."""
    spec = await in_store_thread(check_submission, request, owner, pool.settings, data)
    members = await pool.members.workers()
    if members and not any(spec.request.fits_in(w.capacity) for w in members):
        largest = Resources.largest(w.capacity for w in members)
        raise Unschedulable(
            f"no node could ever run this task: it asks for {spec.request.describe()}, "
            f"the largest node offers {largest.describe()}"
        )

    if request.max_cost < 0 or request.max_cost > MAX_AMOUNT:
        raise InvalidInput("max cost must be a positive number of micro-CPT")
    price_cap = request.max_cost or pool.rates.price_cap(spec.request, spec.timeout_seconds)
    await pool.accounting.hold(owner, task_id, price_cap)
    record = await pool.tasks.submit(spec, request.idempotency_key, task_id, price_cap)
    if record.id != task_id:  # an earlier submission with this key: not a new task
        await pool.accounting.give_back(owner, task_id, price_cap)
    if record.status in PENDING_STATES:
        pool.enqueue(record)
    return record


def check_visible(caller: Caller, record: TaskRecord, owner: str = "") -> None:
    """Nodes see their own tasks; the hub sees every task, or, acting for ``owner``, that
    account's only. Another's task is "not found", word for word as a task that does not
    exist (``taskstore``), so nobody can learn which task ids exist."""
    if caller.role == "hub":
        visible = not owner or record.owner == owner
    else:
        visible = record.owner == caller.node_id
    if not visible:
        raise NotFound(f"no task {record.id!r}")


async def visible_task(pool: Pool, caller: Caller, task_id: str, owner: str = "") -> TaskRecord:
    record = await pool.tasks.get(task_id)
    check_visible(caller, record, owner)
    return record


async def describe(
    pool: Pool, record: TaskRecord, attempts: list[dict[str, Any]] | None = None
) -> pb.Task:
    """The task as the API shows it (its attempts are read unless given)."""
    if attempts is None:
        attempts = await pool.tasks.attempts(record.id)
    worker = pool.scheduler.workers.get(record.node_on(attempts))
    return record.to_proto(attempts, worker.name if worker else "")


async def describe_all(pool: Pool, records: list[TaskRecord]) -> list[pb.Task]:
    attempts = await pool.tasks.attempts_of([r.id for r in records])
    return [await describe(pool, r, a) for r, a in zip(records, attempts, strict=True)]


async def cancel(pool: Pool, caller: Caller, task_id: str, owner: str = "") -> TaskRecord:
    await visible_task(pool, caller, task_id, owner)
    state, node_id, attempt = await pool.tasks.cancel(task_id)
    if state == TaskState.CANCELLED:
        pool.dispatch.withdraw(task_id)
        pool.settle(task_id)
    else:
        pool.liveness.send(node_id, cancel_message(task_id, attempt))
    return await pool.tasks.get(task_id)


def log_position(after: str) -> str:
    """Where to read a task's log from: after the entry id ``after``, or from the start."""
    if after and not LOG_ENTRY_ID.fullmatch(after):
        raise InvalidInput(f"after {after[:40]!r} is not a log entry id like 1712345678901-0")
    return after or "0"


def page_size(limit: int, default: int) -> int:
    """A request's ``limit``: 0 means ``default``; at most ``MAX_ROWS``."""
    if not 0 <= limit <= MAX_ROWS:
        raise InvalidInput(f"limit must be between 1 and {MAX_ROWS}")
    return limit or default


async def log_page(
    pool: Pool, caller: Caller, task_id: str, after: str, limit: int, owner: str = ""
) -> tuple[list[LogRecord], bool]:
    """Up to ``limit`` entries after ``after``, and whether that is the end of the log."""
    limit = page_size(limit, MAX_ROWS)
    record = await visible_task(pool, caller, task_id, owner)  # first: no entry is missed
    page = await pool.tasks.read_logs(pool.raw_db, task_id, log_position(after), None, limit)
    return page, record.status in FINAL_STATES and len(page) < limit


async def logs(
    pool: Pool, caller: Caller, task_id: str, follow: bool, after: str = "", owner: str = ""
) -> AsyncIterator[LogRecord]:
    """The task's log entries after the entry id ``after`` (all of them when empty)."""
    await visible_task(pool, caller, task_id, owner)
    after = log_position(after)
    while True:
        block = 1000 if follow else None
        batch = await pool.tasks.read_logs(pool.raw_db, task_id, after, block)
        for record in batch:
            after = record.entry_id
            yield record
        if batch:
            continue
        if not follow or (await pool.tasks.get(task_id)).status in FINAL_STATES:
            for record in await pool.tasks.read_logs(pool.raw_db, task_id, after, None):
                yield record
            return
