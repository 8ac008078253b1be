"""Money around tasks: escrow at submission, settlement once a task has ended, tips.

Every movement has an idempotency key derived from the task (``escrow:<task>``,
``pay:<task>``, ``refund:<task>``), so settling twice, or again after a crash, changes
nothing: whatever retries, lost workers, duplicate results or restarts happen, a task is
paid for exactly once. The pool settles a task when it sees it end, and at start settles
every ended task not marked settled (a crash between the two transfers is finished then).

Policy: the worker that ran the final attempt is paid for what the task held — its
requested resources for that attempt's wall time (model/pricing.py), at most the price cap —
also when the task failed, timed out or was cancelled while running (wall time up to the
stop); a task its agent stopped once it had used all the time its cap buys pays exactly the
cap. Attempts lost with their node, or interrupted by a draining agent, are not paid, so a
retried task spends at most its one cap in all. The rest of the price cap goes back to the
submitter.
"""

from __future__ import annotations

import logging
import secrets

from hivemind_cluster.core import errors
from hivemind_cluster.core.units import MICRO, format_cpt
from hivemind_cluster.model.accounts import ESCROW
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.pool.ledger import AsyncLedger, Entry
from hivemind_cluster.pool.metrics import SETTLED_CPT, SETTLEMENTS
from hivemind_cluster.pool.taskstore import TaskStore

log = logging.getLogger("hivemind.pool.accounting")


class Accounting:
    def __init__(self, ledger: AsyncLedger, rates: RateCard, tasks: TaskStore) -> None:
        self.ledger = ledger
        self.rates = rates
        self.tasks = tasks
        self._opened: set[str] = set()

    async def start(self) -> None:
        """Create the supply once, then finish every settlement a crash interrupted."""
        await self.ledger.genesis()
        for task_id in await self.tasks.unsettled():
            await self.settle(task_id)

    async def open(self, account: str, kind: str) -> None:
        """Open an account once (with its grant); remembered, so later calls cost nothing."""
        if account not in self._opened:
            await self.ledger.open_account(account, kind)
            self._opened.add(account)

    async def hold(self, owner: str, task_id: str, price_cap: int) -> None:
        """Move a task's price cap from its submitter into escrow, or refuse the task."""
        await self.open(owner, "user")
        try:
            await self.ledger.transfer(
                owner, ESCROW, price_cap, f"escrow for task {task_id}", f"escrow:{task_id}", task_id
            )
        except errors.Conflict:
            balance = await self.ledger.balance(owner)
            raise errors.Conflict(
                f"insufficient balance: the task's price cap is {format_cpt(price_cap)} CPT, "
                f"{owner} has {format_cpt(balance)} CPT"
            ) from None

    async def give_back(self, owner: str, task_id: str, price_cap: int) -> None:
        """Return an escrow whose task was not created (an idempotent resubmission)."""
        await self.ledger.transfer(
            ESCROW, owner, price_cap, f"task {task_id} not created", f"refund:{task_id}", task_id
        )

    async def settle(self, task_id: str) -> int:
        """Pay the worker and refund the submitter for an ended task; returns the cost."""
        record, attempts = await self.tasks.get_with_attempts(task_id)
        if record.status not in FINAL_STATES or record.settled:
            return record.cost
        final = attempts[-1] if attempts else {}
        worker = str(final.get("node_id", "")) if final.get("status") in FINAL_STATES else ""
        wall_seconds = record.usage.get("wall_seconds", 0)
        cost = self.rates.capped_cost(record.request, wall_seconds, record.price_cap)
        cost = cost if worker else 0
        if cost > 0:
            await self.open(worker, "worker")
        try:
            paid = await self.ledger.settle(
                task_id, worker, cost, record.owner, record.price_cap - cost
            )
        except Exception:
            SETTLEMENTS.labels("failed").inc()
            raise
        SETTLEMENTS.labels("paid" if paid else "nothing_owed").inc()
        SETTLED_CPT.inc(paid / MICRO)
        log.debug("task %s settled: %s CPT to %s", task_id, format_cpt(paid), worker or "nobody")
        return paid

    async def tip(self, source: str, project: str, amount: int, key: str) -> Entry:
        if await self.ledger.kind(project) != "project":
            raise errors.InvalidInput(f"{project} is not a registered project account")
        await self.open(source, "user")
        return await self.ledger.transfer(
            source, project, amount, f"tip to {project}", key or f"tip:{secrets.token_hex(8)}"
        )
