"""The CPT ledger: accounts, transfers and the journal (pool/ledger.lua), and its audit.

Amounts are integers of micro-CPT (1 CPT = 1,000,000 uCPT); no float ever touches a
balance. The supply (1,000,000,000,000 CPT) is created once in the treasury; every
account opened gets a grant from it. Each movement is one journal entry, applied in one
Lua call together with both balance changes; replaying an idempotency key returns the
original entry and changes nothing. Settling a task also adds its payment to what the
worker has earned (``earned``). ``audit`` recomputes every balance, and every worker's
earnings, from the journal.

Each operation is written once, as a generator that yields the Redis requests it needs
(a ``Command``, a ``Batch`` of them sent in one pipeline, or a ``FunctionCall`` into the
Lua library) and is sent back each reply. ``Ledger`` runs them on a synchronous client,
``AsyncLedger`` on an asyncio one; neither knows what an operation asks or how its reply
reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from hivemind_cluster.core import errors
from hivemind_cluster.core.units import MAX_AMOUNT, format_cpt
from hivemind_cluster.model.accounts import (
    ACCOUNT_KINDS,
    ESCROW,
    PAYMENT_PREFIX,
    REGISTRATION_GRANT,
    TOTAL_SUPPLY,
    TREASURY,
    check_account,
)
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool.store import LEDGER

HISTORY_SCAN = 10_000  # newest journal entries looked through for an account's history
KEYS = [
    keys.LEDGER_BALANCES,
    keys.LEDGER_ACCOUNTS,
    keys.LEDGER_JOURNAL,
    keys.LEDGER_IDEMPOTENCY,
    keys.LEDGER_SUPPLY,
]
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    id: str
    time: float
    source: str
    target: str
    amount: int
    reason: str
    task: str
    key: str

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Entry:
        """From a Lua reply: ``[entry id, [field, value, ...]]``."""
        entry_id, flat = reply
        return cls.from_fields(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> Entry:
        """From a stream entry as redis-py reads it."""
        return cls(
            id=str(entry_id),
            time=float(fields["time"]),
            source=fields["from"],
            target=fields["to"],
            amount=int(fields["amount"]),
            reason=fields["reason"],
            task=fields["task"],
            key=fields["key"],
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "from": self.source,
            "to": self.target,
            "amount": self.amount,
            "amount_cpt": format_cpt(self.amount),
            "reason": self.reason,
            "task": self.task,
            "idempotency_key": self.key,
        }


# ---- requests an operation yields ----------------------------------------------------------


class Command:
    """One redis-py client call, by method name: issued alike on a client or a pipeline."""

    def __init__(self, method: str, *args: Any, **options: Any) -> None:
        self.method, self.args, self.options = method, args, options

    def issue(self, client: Any) -> Any:
        return getattr(client, self.method)(*self.args, **self.options)


class Batch:
    """Commands sent in one pipeline (no transaction): one round trip, a list of replies."""

    def __init__(self, *commands: Command) -> None:
        self.commands = commands

    def issue(self, client: Any) -> Any:
        pipe = client.pipeline(transaction=False)
        for command in self.commands:
            command.issue(pipe)
        return pipe.execute()


@dataclass(frozen=True)
class FunctionCall:
    """A call of a function of the ledger's Lua library (its errors become HiveMind ones)."""

    function: str
    args: list[Any]
    more_keys: tuple[str, ...] = ()

    @property
    def keys(self) -> list[str]:
        return [*KEYS, *self.more_keys]


Request = Command | Batch | FunctionCall
# Yields requests, is sent each one's reply, returns the operation's result.
Operation = Generator[Request, Any, T]


# ---- the operations ------------------------------------------------------------------------


def _genesis() -> Operation[int]:
    return int(
        (yield FunctionCall("hm_ledger_genesis", [TREASURY, TOTAL_SUPPLY, time.time(), ESCROW]))
    )


def _open_account(account: str, kind: str) -> Operation[Entry]:
    if kind not in ACCOUNT_KINDS:
        raise errors.InvalidInput(f"account kind must be one of {', '.join(ACCOUNT_KINDS)}")
    args = [check_account(account), kind, TREASURY, REGISTRATION_GRANT, time.time()]
    return Entry.from_reply((yield FunctionCall("hm_ledger_open", args)))


def _transfer(
    source: str, target: str, amount: int, reason: str, key: str, task: str
) -> Operation[Entry]:
    if not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise errors.InvalidInput("amount must be a positive integer of micro-CPT")
    if not key or len(key) > 200:
        raise errors.InvalidInput("an idempotency key of 1-200 characters is required")
    args = [source, target, str(amount), reason[:200], task[:64], key, time.time()]
    return Entry.from_reply((yield FunctionCall("hm_ledger_transfer", args)))


def _settle(task_id: str, worker: str, cost: int, owner: str, refund: int) -> Operation[int]:
    args = [task_id, worker, str(cost), owner, str(refund), time.time(), ESCROW]
    more_keys = (keys.TASK.format(id=task_id), keys.LEDGER_EARNED)
    return int((yield FunctionCall("hm_ledger_settle", args, more_keys)))


def _balance(account: str) -> Operation[int]:
    raw = yield Command("hget", keys.LEDGER_BALANCES, account)
    if raw is None:
        raise errors.NotFound(f"no account {account}")
    return int(str(raw))


def _kind(account: str) -> Operation[str]:
    raw = yield Command("hget", keys.LEDGER_ACCOUNTS, account)
    if raw is None:
        raise errors.NotFound(f"no account {account}")
    return str(json.loads(raw)["kind"])


def _earned(account: str) -> Operation[int]:
    return int(str((yield Command("hget", keys.LEDGER_EARNED, account)) or 0))


def _summary(account: str) -> Operation[tuple[str, int, int]]:
    meta, balance, earned = yield Batch(
        Command("hget", keys.LEDGER_ACCOUNTS, account),
        Command("hget", keys.LEDGER_BALANCES, account),
        Command("hget", keys.LEDGER_EARNED, account),
    )
    if meta is None or balance is None:
        raise errors.NotFound(f"no account {account}")
    return str(json.loads(meta)["kind"]), int(balance), int(earned or 0)


def _accounts() -> Operation[list[dict[str, Any]]]:
    kinds, balances = yield Batch(
        Command("hgetall", keys.LEDGER_ACCOUNTS), Command("hgetall", keys.LEDGER_BALANCES)
    )
    return [
        {
            "account": name,
            "kind": json.loads(meta)["kind"],
            "balance": int(balances.get(name, 0)),
            "balance_cpt": format_cpt(int(balances.get(name, 0))),
        }
        for name, meta in sorted(kinds.items())
    ]


def _journal(batch: int) -> Operation[list[Entry]]:
    entries: list[Entry] = []
    start = "-"
    while True:
        chunk = yield Command("xrange", keys.LEDGER_JOURNAL, start, "+", count=batch)
        entries.extend(Entry.from_fields(i, f) for i, f in chunk)
        if len(chunk) < batch:
            return entries
        start = "(" + chunk[-1][0]


def _history(account: str, limit: int) -> Operation[list[Entry]]:
    exists, newest = yield Batch(
        Command("hexists", keys.LEDGER_BALANCES, account),
        Command("xrevrange", keys.LEDGER_JOURNAL, count=HISTORY_SCAN),
    )
    if not exists:
        raise errors.NotFound(f"no account {account}")
    found: list[Entry] = []
    for entry_id, fields in newest:
        if account in (fields["from"], fields["to"]):
            found.append(Entry.from_fields(entry_id, fields))
            if len(found) >= limit:
                break
    return found[::-1]


def _audit(journal_batch: int = 10_000) -> Operation[dict[str, Any]]:
    supply = int(str((yield Command("get", keys.LEDGER_SUPPLY)) or 0))
    entries = yield from _journal(journal_batch)
    computed: dict[str, int] = {}
    earned: dict[str, int] = {}
    for entry in entries:
        if entry.source:
            computed[entry.source] = computed.get(entry.source, 0) - entry.amount
        computed[entry.target] = computed.get(entry.target, 0) + entry.amount
        if entry.key.startswith(PAYMENT_PREFIX):
            earned[entry.target] = earned.get(entry.target, 0) + entry.amount
    stored = {k: int(v) for k, v in (yield Command("hgetall", keys.LEDGER_BALANCES)).items()}
    stored_earned = {k: int(v) for k, v in (yield Command("hgetall", keys.LEDGER_EARNED)).items()}
    return _audit_report(supply, len(entries), stored, computed, stored_earned, earned)


def _audit_report(
    supply: int,
    journal_entries: int,
    stored: dict[str, int],
    computed: dict[str, int],
    stored_earned: dict[str, int],
    earned: dict[str, int],
) -> dict[str, Any]:
    mismatched = _differing(stored, computed)
    mismatched_earnings = _differing(stored_earned, earned)
    negative = sorted(a for a, v in stored.items() if v < 0)
    total = sum(stored.values())
    return {
        "total_supply": supply,
        "sum_of_balances": total,
        "journal_entries": journal_entries,
        "accounts": len(stored),
        "mismatched_accounts": mismatched,
        "mismatched_earnings": mismatched_earnings,
        "negative_accounts": negative,
        "ok": supply == TOTAL_SUPPLY
        and total == supply
        and not mismatched
        and not mismatched_earnings
        and not negative,
    }


def _differing(stored: dict[str, int], computed: dict[str, int]) -> list[str]:
    """The accounts whose stored and computed figures differ (a missing one counts as 0)."""
    return sorted(a for a in set(stored) | set(computed) if stored.get(a, 0) != computed.get(a, 0))


# ---- the fronts ----------------------------------------------------------------------------


class Ledger:
    """The ledger over a synchronous Redis client (CLI, tests, benchmarks)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client: Any = client  # decode_responses=True; replies are untyped

    def _run(self, operation: Operation[T]) -> T:
        """Issue each request the operation yields and send it the reply, until it returns."""
        try:
            request = next(operation)
            while True:
                request = operation.send(self._issue(request))
        except StopIteration as finished:
            result: T = finished.value
            return result

    def _issue(self, request: Request) -> Any:
        if isinstance(request, FunctionCall):
            return LEDGER.call(self.client, request.function, request.keys, request.args)
        return request.issue(self.client)

    def genesis(self) -> int:
        """Create the supply in the treasury (and the escrow account), once."""
        return self._run(_genesis())

    def open_account(self, account: str, kind: str) -> Entry:
        """Open an account with its registration grant (idempotent)."""
        return self._run(_open_account(account, kind))

    def transfer(
        self, source: str, target: str, amount: int, reason: str, key: str, task: str = ""
    ) -> Entry:
        return self._run(_transfer(source, target, amount, reason, key, task))

    def balance(self, account: str) -> int:
        return self._run(_balance(account))

    def earned(self, account: str) -> int:
        """Micro-CPT ever paid to ``account`` for running tasks."""
        return self._run(_earned(account))

    def accounts(self) -> list[dict[str, Any]]:
        return self._run(_accounts())

    def journal(self, batch: int = 10_000) -> list[Entry]:
        return self._run(_journal(batch))

    def history(self, account: str, limit: int = 100) -> list[Entry]:
        """The account's most recent movements (among the newest HISTORY_SCAN entries)."""
        return self._run(_history(account, limit))

    def audit(self) -> dict[str, Any]:
        """Recompute every balance and every worker's earnings from the journal and compare
        them with the stored ones."""
        return self._run(_audit())


class AsyncLedger:
    """The same operations for the pool's asyncio Redis client."""

    def __init__(self, client: Any) -> None:
        self.client = client  # redis.asyncio, decode_responses=True

    async def _run(self, operation: Operation[T]) -> T:
        try:
            request = next(operation)
            while True:
                request = operation.send(await self._issue(request))
        except StopIteration as finished:
            result: T = finished.value
            return result

    async def _issue(self, request: Request) -> Any:
        if isinstance(request, FunctionCall):
            return await LEDGER.acall(self.client, request.function, request.keys, request.args)
        return await request.issue(self.client)

    async def genesis(self) -> int:
        return await self._run(_genesis())

    async def open_account(self, account: str, kind: str) -> Entry:
        return await self._run(_open_account(account, kind))

    async def transfer(
        self, source: str, target: str, amount: int, reason: str, key: str, task: str = ""
    ) -> Entry:
        return await self._run(_transfer(source, target, amount, reason, key, task))

    async def settle(self, task_id: str, worker: str, cost: int, owner: str, refund: int) -> int:
        """Pay ``cost`` to the worker and ``refund`` to the owner from escrow, and mark the
        task settled — one atomic step, done at most once per task."""
        return await self._run(_settle(task_id, worker, cost, owner, refund))

    async def balance(self, account: str) -> int:
        return await self._run(_balance(account))

    async def kind(self, account: str) -> str:
        return await self._run(_kind(account))

    async def history(self, account: str, limit: int) -> list[Entry]:
        """The account's most recent movements (among the newest HISTORY_SCAN entries)."""
        return await self._run(_history(account, limit))

    async def summary(self, account: str) -> tuple[str, int, int]:
        """The account's kind, balance and earnings, in one round trip."""
        return await self._run(_summary(account))
