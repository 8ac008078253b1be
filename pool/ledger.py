"""The CPT ledger: accounts, transfers and the journal (pool/ledger.lua), and its audit.

Amounts are integers of micro-CPT (1 CPT = 1,000,000 uCPT); no float ever touches a
balance. The supply (1,000,000,000,000 CPT) is created once in the treasury; every
account opened gets a grant from it. Each movement is one journal entry, applied in one
Lua call together with both balance changes; replaying an idempotency key returns the
original entry and changes nothing. Settling a task also adds its payment to what the
worker has earned (``earned``). ``audit`` recomputes every balance, and every worker's
earnings, from the journal.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

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


def _genesis_args() -> tuple[str, list[Any]]:
    return "hm_ledger_genesis", [TREASURY, TOTAL_SUPPLY, time.time(), ESCROW]


def _open_args(account: str, kind: str) -> tuple[str, list[Any]]:
    if kind not in ACCOUNT_KINDS:
        raise errors.InvalidInput(f"account kind must be one of {', '.join(ACCOUNT_KINDS)}")
    return "hm_ledger_open", [
        check_account(account),
        kind,
        TREASURY,
        REGISTRATION_GRANT,
        time.time(),
    ]


def _transfer_args(
    source: str, target: str, amount: int, reason: str, key: str, task: str
) -> tuple[str, list[Any]]:
    if not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise errors.InvalidInput("amount must be a positive integer of micro-CPT")
    if not key or len(key) > 200:
        raise errors.InvalidInput("an idempotency key of 1-200 characters is required")
    return "hm_ledger_transfer", [
        source,
        target,
        str(amount),
        reason[:200],
        task[:64],
        key,
        time.time(),
    ]


class Ledger:
    """The ledger over a synchronous Redis client (CLI, tests, benchmarks)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client: Any = client  # decode_responses=True; replies are untyped

    def _call(self, function: str, args: list[Any]) -> Any:
        return LEDGER.call(self.client, function, KEYS, args)

    def genesis(self) -> int:
        """Create the supply in the treasury (and the escrow account), once."""
        return int(self._call(*_genesis_args()))

    def open_account(self, account: str, kind: str) -> Entry:
        """Open an account with its registration grant (idempotent)."""
        return Entry.from_reply(self._call(*_open_args(account, kind)))

    def transfer(
        self, source: str, target: str, amount: int, reason: str, key: str, task: str = ""
    ) -> Entry:
        call = _transfer_args(source, target, amount, reason, key, task)
        return Entry.from_reply(self._call(*call))

    def balance(self, account: str) -> int:
        raw = self.client.hget(keys.LEDGER_BALANCES, account)
        if raw is None:
            raise errors.NotFound(f"no account {account}")
        return int(str(raw))

    def earned(self, account: str) -> int:
        """Micro-CPT ever paid to ``account`` for running tasks."""
        return int(str(self.client.hget(keys.LEDGER_EARNED, account) or 0))

    def accounts(self) -> list[dict[str, Any]]:
        kinds = self.client.hgetall(keys.LEDGER_ACCOUNTS)
        balances = self.client.hgetall(keys.LEDGER_BALANCES)
        return [
            {
                "account": name,
                "kind": json.loads(meta)["kind"],
                "balance": int(balances.get(name, 0)),
                "balance_cpt": format_cpt(int(balances.get(name, 0))),
            }
            for name, meta in sorted(kinds.items())
        ]

    def journal(self, batch: int = 10_000) -> list[Entry]:
        entries: list[Entry] = []
        start = "-"
        while True:
            chunk = self.client.xrange(keys.LEDGER_JOURNAL, start, "+", count=batch)
            entries.extend(Entry.from_fields(i, f) for i, f in chunk)
            if len(chunk) < batch:
                return entries
            start = "(" + chunk[-1][0]

    def history(self, account: str, limit: int = 100) -> list[Entry]:
        """The account's most recent movements (among the newest HISTORY_SCAN entries)."""
        pipe = self.client.pipeline(transaction=False)
        return _movements_of(account, _history_reads(pipe, account).execute(), limit)

    def audit(self) -> dict[str, Any]:
        """Recompute every balance and every worker's earnings from the journal and compare
        them with the stored ones."""
        supply = int(str(self.client.get(keys.LEDGER_SUPPLY) or 0))
        entries = self.journal()
        computed: dict[str, int] = {}
        earned: dict[str, int] = {}
        for entry in entries:
            if entry.source:
                computed[entry.source] = computed.get(entry.source, 0) - entry.amount
            computed[entry.target] = computed.get(entry.target, 0) + entry.amount
            if entry.key.startswith(PAYMENT_PREFIX):
                earned[entry.target] = earned.get(entry.target, 0) + entry.amount
        stored = {k: int(v) for k, v in self.client.hgetall(keys.LEDGER_BALANCES).items()}
        stored_earned = {k: int(v) for k, v in self.client.hgetall(keys.LEDGER_EARNED).items()}
        mismatched = _differing(stored, computed)
        mismatched_earnings = _differing(stored_earned, earned)
        negative = sorted(a for a, v in stored.items() if v < 0)
        total = sum(stored.values())
        return {
            "total_supply": supply,
            "sum_of_balances": total,
            "journal_entries": len(entries),
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


def _history_reads(pipe: Any, account: str) -> Any:
    """Queue whether the account exists and the newest journal entries (``_movements_of``)."""
    pipe.hexists(keys.LEDGER_BALANCES, account)
    pipe.xrevrange(keys.LEDGER_JOURNAL, count=HISTORY_SCAN)
    return pipe


def _movements_of(account: str, replies: list[Any], limit: int) -> list[Entry]:
    """From ``_history_reads``' replies: the account's last ``limit`` movements, oldest first."""
    exists, newest = replies
    if not exists:
        raise errors.NotFound(f"no account {account}")
    found: list[Entry] = []
    for entry_id, fields in newest:
        if account in (fields["from"], fields["to"]):
            found.append(Entry.from_fields(entry_id, fields))
            if len(found) >= limit:
                break
    return found[::-1]


class AsyncLedger:
    """The same operations for the pool's asyncio Redis client."""

    def __init__(self, client: Any) -> None:
        self.client = client  # redis.asyncio, decode_responses=True

    async def _call(self, function: str, args: list[Any], more_keys: tuple[str, ...] = ()) -> Any:
        return await LEDGER.acall(self.client, function, [*KEYS, *more_keys], args)

    async def genesis(self) -> int:
        return int(await self._call(*_genesis_args()))

    async def open_account(self, account: str, kind: str) -> Entry:
        return Entry.from_reply(await self._call(*_open_args(account, kind)))

    async def transfer(
        self, source: str, target: str, amount: int, reason: str, key: str, task: str = ""
    ) -> Entry:
        call = _transfer_args(source, target, amount, reason, key, task)
        return Entry.from_reply(await self._call(*call))

    async def settle(self, task_id: str, worker: str, cost: int, owner: str, refund: int) -> int:
        """Pay ``cost`` to the worker and ``refund`` to the owner from escrow, and mark the
        task settled — one atomic step, done at most once per task."""
        args = [task_id, worker, str(cost), owner, str(refund), time.time(), ESCROW]
        more_keys = (keys.TASK.format(id=task_id), keys.LEDGER_EARNED)
        paid = await self._call("hm_ledger_settle", args, more_keys)
        return int(paid)

    async def balance(self, account: str) -> int:
        raw = await self.client.hget(keys.LEDGER_BALANCES, account)
        if raw is None:
            raise errors.NotFound(f"no account {account}")
        return int(raw)

    async def kind(self, account: str) -> str:
        raw = await self.client.hget(keys.LEDGER_ACCOUNTS, account)
        if raw is None:
            raise errors.NotFound(f"no account {account}")
        return str(json.loads(raw)["kind"])

    async def history(self, account: str, limit: int) -> list[Entry]:
        """The account's most recent movements (among the newest HISTORY_SCAN entries)."""
        pipe = self.client.pipeline(transaction=False)
        return _movements_of(account, await _history_reads(pipe, account).execute(), limit)

    async def summary(self, account: str) -> tuple[str, int, int]:
        """The account's kind, balance and earnings, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(keys.LEDGER_ACCOUNTS, account)
        pipe.hget(keys.LEDGER_BALANCES, account)
        pipe.hget(keys.LEDGER_EARNED, account)
        meta, balance, earned = await pipe.execute()
        if meta is None or balance is None:
            raise errors.NotFound(f"no account {account}")
        return str(json.loads(meta)["kind"]), int(balance), int(earned or 0)
