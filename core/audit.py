"""The hub's audit log: who did what, from where, append-only and hash-chained, in Redis.

Each entry is one JSON object in the list ``LOG``: ``seq`` (1, 2, …), ``time``, ``actor``
(``user:alice``, ``node:<id>``, ``hub-admin``), ``source`` (an IP address, ``local`` for the
hub's own command line), ``action`` (a bounded dotted name: ``ACTIONS``), ``target``,
``outcome``, ``detail`` (short; never a secret), ``prev`` (the hash of the entry before,
``GENESIS`` for the first) and ``hash``: the SHA-256 of the entry's canonical JSON (sorted
keys, no spaces) without ``hash``. ``HEAD`` holds the last entry's seq and hash.

Appending is safe from several processes at once (the hub, its web child, command-line
tools): WATCH the head, read it, then MULTI: RPUSH the entry and SET the head; another
writer in between makes EXEC fail and the append is built again on the new head. The hash
is computed here rather than in a Redis function because Redis's Lua has no SHA-256.

**An append that fails** (Redis down, say) is logged as an error and the action goes on:
``record`` never raises. The actions audited store their own state in the same Redis, so
with Redis down they fail themselves before anything is audited; an audit failing after an
action succeeded must not turn it into an error the user retries (a second token, a second
task). The price is that an entry can be missing without a trace in the chain; the hub's
log says so. ``append`` (which raises) is there for callers that would rather fail.

``verify`` walks the chain and names the first entry that was altered (its hash does not
match its content, or it does not follow the one before) or removed (a gap in the seqs, or
the head counts more entries than the list holds). It cannot see a chain rewritten whole
and consistently by someone with write access to Redis: docs/audit.md says what helps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import redis
import redis.asyncio as aioredis

from hivemind_cluster.core.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)

# Redis keys.
LOG = "hm:audit:log"  # list: the entries' JSON, in chain order (seq 1 first)
HEAD = "hm:audit:head"  # string: JSON {"seq", "hash"} of the last entry

GENESIS = "0" * 64  # the ``prev`` of the first entry
MAX_DETAIL = 4096  # characters of an entry's detail (a settings change names every key)
MAX_FIELD = 200  # characters of its actor, source, target and outcome
APPEND_TRIES = 1000  # appends losing the race to another writer before giving up
HUB_ADMIN = "hub-admin"  # the actor of the hub's command line and hub.toml
LOCAL = "local"  # the source of the hub's own command line and files
ACTIONS = frozenset(
    {
        "token.create",
        "token.revoke",
        "enrollment.accept",
        "enrollment.refuse",
        "node.revoke",
        "node.leave",
        "login.ok",
        "login.fail",
        "account.create",
        "api_token.issue",
        "api_token.revoke",
        "task.submit",
        "task.cancel",
        "ledger.tip",
        "policy.change",
        "policy.refuse",
        "settings.change",
    }
)
_ACTION_FILTER = re.compile(r"^[a-z_]+(\.[a-z_]*)?$")


@dataclass(frozen=True)
class Event:
    """What happened, before it has a place in the chain."""

    actor: str
    source: str
    action: str
    target: str
    outcome: str = "ok"
    detail: str = ""


@dataclass(frozen=True)
class Entry:
    seq: int
    time: float
    actor: str
    source: str
    action: str
    target: str
    outcome: str
    detail: str
    prev: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The entry as stored in Redis and in the mirror file: canonical JSON."""
        return canonical(self.as_json())


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a chain: the entry (seq) and how."""

    seq: int
    kind: str  # "altered" or "removed"
    message: str


def canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def digest(fields: Mapping[str, Any]) -> str:
    """The hash of an entry: SHA-256 of its canonical JSON without ``hash``."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def chained(event: Event, seq: int, prev: str, now: float | None = None) -> Entry:
    """``event`` as entry ``seq`` after the entry whose hash is ``prev``."""
    if event.action not in ACTIONS:
        raise InvalidInput(f"unknown audit action {event.action!r}")
    fields: dict[str, Any] = {
        "seq": seq,
        "time": round(time.time() if now is None else now, 6),
        "actor": _short(event.actor, MAX_FIELD),
        "source": _short(event.source, MAX_FIELD),
        "action": event.action,
        "target": _short(event.target, MAX_FIELD),
        "outcome": _short(event.outcome, MAX_FIELD),
        "detail": _short(event.detail, MAX_DETAIL),
        "prev": prev,
    }
    return Entry(**fields, hash=digest(fields))


def head_after(entry: Entry) -> str:
    return canonical({"seq": entry.seq, "hash": entry.hash})


def read_head(raw: str | bytes | None) -> tuple[int, str]:
    """(seq, hash) of the last entry; (0, GENESIS) for an empty log."""
    if not raw:
        return 0, GENESIS
    try:
        head = json.loads(raw)
        return int(head["seq"]), str(head["hash"])
    except (ValueError, KeyError, TypeError):
        raise InvalidInput(f"the audit log's head ({HEAD}) is corrupt") from None


class AuditLog:
    """The log over a synchronous client (the web, the command line, enrollment threads)."""

    def __init__(self, db: redis.Redis) -> None:
        self.db = db

    def append(self, event: Event) -> Entry:
        """Add ``event`` as the next entry; Unavailable if Redis cannot be reached."""
        try:
            with self.db.pipeline() as pipe:
                for _ in range(APPEND_TRIES):
                    try:
                        pipe.watch(HEAD)  # type: ignore[no-untyped-call]
                        seq, prev = read_head(pipe.get(HEAD))
                        entry = chained(event, seq + 1, prev)
                        pipe.multi()
                        pipe.rpush(LOG, entry.line())
                        pipe.set(HEAD, head_after(entry))
                        pipe.execute()
                        return entry
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise Unavailable(f"cannot write the audit log ({exc})") from None
        raise Unavailable("cannot write the audit log: too many writers at once")

    def record(self, event: Event) -> Entry | None:
        """``append``, logging rather than raising when it fails (see the module's text)."""
        try:
            return self.append(event)
        except Exception as exc:
            lost(event, exc)
            return None

    def lines(self, start: int = 0) -> list[str]:
        """The entries' JSON from index ``start`` on (entry n is at n - 1 if none is gone)."""
        lines: list[str | bytes] = self.db.lrange(LOG, start, -1)
        return [line.decode() if isinstance(line, bytes) else line for line in lines]

    def head(self) -> tuple[int, str]:
        return read_head(self.db.get(HEAD))

    def length(self) -> int:
        """How many entries the list holds (the head's seq, unless some were removed)."""
        return int(self.db.llen(LOG))

    def entries(self, since: float | None = None, action: str | None = None) -> list[Entry]:
        """The entries from ``since`` (a time) on, of ``action`` (``token.create``, or a
        prefix: ``token.`` or ``token``); entries that are not JSON any more are left out
        (``verify`` names them)."""
        return select(parsed(self.lines()), since, action)

    def verify(self) -> tuple[int, Problem | None]:
        """How many entries there are, and the first problem of the chain (None: intact)."""
        lines = self.lines()
        return len(lines), first_problem(lines, self.head())


def lost(event: Event, error: Exception) -> None:
    """An entry that could not be written: said in the hub's log, the action goes on."""
    log.error("audit entry lost (%s %s by %s): %s", event.action, event.target, event.actor, error)


class AsyncAuditLog:
    """The log over an asyncio client (the pool, the peer distributor)."""

    # One append at a time per event loop: concurrent tasks of one process would otherwise
    # mostly lose the WATCH race to each other and retry (5.8 tries per submission at 64 at
    # once, bench/throughput.py). Other processes are still kept out by the WATCH.
    _turns: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, db: aioredis.Redis) -> None:
        self.db = db

    async def append(self, event: Event) -> Entry:
        """``AuditLog.append`` over asyncio."""
        loop = asyncio.get_running_loop()
        turn = self._turns.setdefault(loop, asyncio.Lock())
        async with turn:
            return await self._append(event)

    async def _append(self, event: Event) -> Entry:
        try:
            async with self.db.pipeline() as pipe:
                for _ in range(APPEND_TRIES):
                    try:
                        await pipe.watch(HEAD)
                        seq, prev = read_head(await pipe.get(HEAD))
                        entry = chained(event, seq + 1, prev)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.rpush(LOG, entry.line())
                        pipe.set(HEAD, head_after(entry))
                        await pipe.execute()
                        return entry
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise Unavailable(f"cannot write the audit log ({exc})") from None
        raise Unavailable("cannot write the audit log: too many writers at once")

    async def record(self, event: Event) -> Entry | None:
        """``append``, logging rather than raising when it fails."""
        try:
            return await self.append(event)
        except Exception as exc:
            lost(event, exc)
            return None


def entry_of(line: str) -> Entry:
    """An entry from its JSON; ValueError if it is not one (a field missing, extra, or of
    another type: an entry rewritten as ``"seq": "5"`` is not an entry)."""
    try:
        fields = json.loads(line)
        entry = Entry(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not an audit entry: {exc}") from None
    numbers_right = type(entry.seq) is int and type(entry.time) in (int, float)
    texts = (entry.actor, entry.source, entry.action, entry.target, entry.outcome)
    if not numbers_right or not all(
        isinstance(t, str) for t in (*texts, entry.detail, entry.prev, entry.hash)
    ):
        raise ValueError("not an audit entry: a field of the wrong type")
    return entry


def parsed(lines: Iterable[str]) -> list[Entry]:
    entries = []
    for line in lines:
        try:
            entries.append(entry_of(line))
        except ValueError:
            continue
    return entries


def check_action_filter(action: str) -> str:
    if not _ACTION_FILTER.match(action):
        raise InvalidInput(
            f"action {action[:40]!r} must be an action like token.create or a prefix like token."
        )
    return action


def matches(entry: Entry, action: str) -> bool:
    """``token.create`` matches itself; ``token.`` and ``token`` match every ``token.*``."""
    prefix = action if action.endswith(".") else action + "."
    return entry.action == action or entry.action.startswith(prefix)


def select(entries: list[Entry], since: float | None, action: str | None) -> list[Entry]:
    return [
        e
        for e in entries
        if (since is None or e.time >= since) and (not action or matches(e, action))
    ]


def first_problem(lines: list[str], head: tuple[int, str]) -> Problem | None:
    """The first entry altered or removed, walking the chain from seq 1; then the head."""
    expected, prev = 1, GENESIS
    for line in lines:
        try:
            entry = entry_of(line)
            intact = digest(json.loads(line)) == entry.hash
        except ValueError:
            intact = False
        if not intact:
            return Problem(expected, "altered", f"entry {expected} was altered")
        if entry.seq > expected:
            return Problem(expected, "removed", f"entry {expected} was removed")
        if entry.seq < expected:
            return Problem(expected, "altered", f"entry {expected} was altered")
        if entry.prev != prev:
            return broken_link(expected)
        expected, prev = expected + 1, entry.hash
    last = expected - 1
    head_seq, head_hash = head
    if head_seq > last:
        return Problem(last + 1, "removed", f"entry {last + 1} was removed")
    if head_seq < last:
        return Problem(
            head_seq + 1, "altered", f"entry {head_seq + 1} was altered (after the head)"
        )
    if last and head_hash != prev:
        return Problem(last, "altered", f"entry {last} was altered (the head has another hash)")
    return None


def broken_link(seq: int) -> Problem:
    """Entry ``seq`` does not carry the hash of the one before: that one was altered and
    its hash computed again (the usual way to hide an edit), or, for the first, itself."""
    if seq == 1:
        return Problem(1, "altered", "entry 1 was altered")
    message = f"entry {seq - 1} was altered (entry {seq} carries another hash for it)"
    return Problem(seq - 1, "altered", message)


def peer_ip(peer: str) -> str:
    """A gRPC peer (``ipv4:198.51.100.7:41234``, ``ipv6:[::1]:5``) as its address."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return rest.rpartition(":")[0].strip("[]")
    return "unknown"
