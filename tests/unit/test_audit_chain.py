"""The audit log's hash chain (core/audit.py) without Redis: entries built into a chain
in memory, then altered, removed or rewritten, and ``first_problem`` naming the entry;
the filters, ``--since``, the settings fold and the mirror's resume
(hub/auditmirror.py) over an in-memory log. Redis itself: tests/integration/test_audit.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemind_cluster.core import audit
from hivemind_cluster.core.audit import GENESIS, AuditLog, Entry, Event, first_problem
from hivemind_cluster.core.errors import InvalidInput, Unavailable
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.auditcli import since_time
from hivemind_cluster.hub.auditmirror import Mirror, record_settings_changes
from tests.support.scratch import free_port

FIELDS = ("time", "actor", "source", "action", "target", "outcome", "detail", "prev", "seq")


def event(n: int, action: str = "task.submit") -> Event:
    return Event(f"user:u{n}", "198.51.100.7", action, f"t{n}", detail=f"entry {n}")


def chain(count: int) -> tuple[list[str], tuple[int, str]]:
    """``count`` entries as Redis holds them (their JSON), and the head."""
    lines, prev = [], GENESIS
    for seq in range(1, count + 1):
        entry = audit.chained(event(seq), seq, prev, now=1000.0 + seq)
        lines.append(entry.line())
        prev = entry.hash
    return lines, (count, prev)


def altered(line: str, field: str) -> str:
    """The entry with one field changed (its hash left as it was)."""
    fields = json.loads(line)
    value = fields[field]
    fields[field] = value + 1 if isinstance(value, int | float) else value + "x"
    return audit.canonical(fields)


def rewritten(line: str, **changes: Any) -> str:
    """The entry changed and its hash computed again: consistent with itself."""
    fields = json.loads(line) | changes
    fields["hash"] = audit.digest(fields)
    return audit.canonical(fields)


@given(st.integers(0, 30))
def test_an_untouched_chain_is_intact(count: int) -> None:
    lines, head = chain(count)
    assert first_problem(lines, head) is None


def test_each_entry_hashes_its_canonical_json_without_the_hash() -> None:
    lines, _ = chain(2)
    first, second = (json.loads(line) for line in lines)
    body = {k: v for k, v in first.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert first["hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert first["prev"] == GENESIS and second["prev"] == first["hash"]
    assert [first["seq"], second["seq"]] == [1, 2]


@given(st.integers(1, 20), st.data())
def test_altering_any_field_of_any_entry_names_it(count: int, data: st.DataObject) -> None:
    lines, head = chain(count)
    index = data.draw(st.integers(0, count - 1))
    field = data.draw(st.sampled_from(FIELDS))
    lines[index] = altered(lines[index], field)
    problem = first_problem(lines, head)
    assert problem is not None
    assert (problem.seq, problem.kind) == (index + 1, "altered")
    assert problem.message == f"entry {index + 1} was altered"


@given(st.integers(2, 20), st.data())
def test_removing_an_entry_names_it(count: int, data: st.DataObject) -> None:
    lines, head = chain(count)
    index = data.draw(st.integers(0, count - 1))
    del lines[index]
    problem = first_problem(lines, head)
    assert problem is not None
    assert (problem.seq, problem.kind) == (index + 1, "removed")
    assert problem.message == f"entry {index + 1} was removed"


@given(st.integers(1, 20), st.data())
def test_an_entry_rewritten_with_a_new_hash_breaks_the_next_link(
    count: int, data: st.DataObject
) -> None:
    """Someone who recomputes the altered entry's hash is caught by the entry after it
    (which still carries the old hash), or by the head for the last one."""
    lines, head = chain(count)
    index = data.draw(st.integers(0, count - 1))
    lines[index] = rewritten(lines[index], actor="user:mallory")
    problem = first_problem(lines, head)
    assert problem is not None
    assert (problem.seq, problem.kind) == (index + 1, "altered")
    assert problem.message.startswith(f"entry {index + 1} was altered")


def test_an_unreadable_entry_is_altered() -> None:
    lines, head = chain(3)
    lines[1] = "not json"
    assert first_problem(lines, head) == audit.Problem(2, "altered", "entry 2 was altered")
    lines[1] = '{"seq": 2}'
    assert first_problem(lines, head) == audit.Problem(2, "altered", "entry 2 was altered")


def test_a_head_ahead_of_the_list_means_the_last_entries_went() -> None:
    lines, head = chain(3)
    assert first_problem(lines[:2], head) == audit.Problem(3, "removed", "entry 3 was removed")
    assert first_problem([], head) == audit.Problem(1, "removed", "entry 1 was removed")
    problem = first_problem(lines, (2, json.loads(lines[1])["hash"]))
    assert problem is not None and (problem.seq, problem.kind) == (3, "altered")
    problem = first_problem(lines, (3, "f" * 64))
    assert problem is not None and (problem.seq, problem.kind) == (3, "altered")


def test_entries_are_bounded_and_actions_known() -> None:
    long = Event("user:a", "x", "login.fail", "t" * 500, detail="d" * 10_000)
    entry = audit.chained(long, 1, GENESIS)
    assert len(entry.target) == audit.MAX_FIELD and len(entry.detail) == audit.MAX_DETAIL
    with pytest.raises(InvalidInput, match="unknown audit action"):
        audit.chained(Event("a", "b", "token.steal", "c"), 1, GENESIS)


def test_action_filters_match_an_action_or_a_group() -> None:
    entries = [
        audit.chained(event(1, a), 1, GENESIS)
        for a in ("token.create", "token.revoke", "task.submit")
    ]
    pick = [e.action for e in audit.select(entries, None, "token.")]
    assert pick == ["token.create", "token.revoke"]
    assert [e.action for e in audit.select(entries, None, "token")] == pick
    assert [e.action for e in audit.select(entries, None, "token.revoke")] == ["token.revoke"]
    assert audit.select(entries, None, "tok") == []
    with pytest.raises(InvalidInput, match="must be an action"):
        audit.check_action_filter("token.*; rm")


def test_since_takes_an_iso_time_or_a_duration_back() -> None:
    assert since_time("90s", now=1000.0) == 910.0
    assert since_time("30m", now=10_000.0) == 8200.0
    assert since_time("2d", now=200_000.0) == 200_000.0 - 172_800
    assert since_time("2026-12-02T14:00:00+00:00") == 1796220000.0
    for bad in ("yesterday", "1w", "-1h", "", "1h30m"):
        with pytest.raises(InvalidInput, match=r"an ISO time .* or a duration like 30m"):
            since_time(bad)


class ListAuditLog(AuditLog):
    """The log in a Python list: the same chain, no Redis."""

    def __init__(self) -> None:
        super().__init__(cast(redis.Redis, None))
        self.stored: list[str] = []
        self.top = (0, GENESIS)  # the head, kept apart from the list as in Redis

    def append(self, event: Event) -> Entry:
        seq, prev = self.head()
        entry = audit.chained(event, seq + 1, prev)
        self.stored.append(entry.line())
        self.top = (entry.seq, entry.hash)
        return entry

    def lines(self, start: int = 0) -> list[str]:
        return self.stored[start:]

    def head(self) -> tuple[int, str]:
        return self.top

    def length(self) -> int:
        return len(self.stored)


def test_settings_changes_record_only_what_changed(tmp_path: Path) -> None:
    log = ListAuditLog()
    settings = HubSettings(state_dir=str(tmp_path))
    first = record_settings_changes(log, settings)
    assert first is not None and json.loads(first.detail) == dataclasses.asdict(settings)
    assert record_settings_changes(log, settings) is None  # nothing changed
    changed = dataclasses.replace(settings, task_timeout=60, allow_pulls=False)
    second = record_settings_changes(log, changed)
    assert second is not None
    assert json.loads(second.detail) == {"task_timeout": 60, "allow_pulls": False}
    assert (second.actor, second.source, second.target) == ("hub-admin", "local", "hub.toml")
    assert record_settings_changes(log, changed) is None
    assert log.verify() == (2, None)


def test_the_mirror_resumes_after_its_last_whole_line(tmp_path: Path) -> None:
    log = ListAuditLog()
    for n in range(1, 4):
        log.append(event(n))
    path = tmp_path / "audit.log"
    assert Mirror(path, log).copy_new() == 3
    log.append(event(4))
    with path.open("a") as file:  # a crash in the middle of writing entry 4
        file.write(log.stored[3][:20])
    mirror = Mirror(path, log)
    assert mirror.last_seq == 3
    assert mirror.copy_new() == 1 and mirror.copy_new() == 0
    assert path.read_text().splitlines() == log.stored


def test_the_mirror_misses_nothing_new_after_entries_were_removed(tmp_path: Path) -> None:
    """Entries removed from Redis move the later ones to lower indices: what comes after
    is still mirrored, each once (and the mirror keeps the removed ones)."""
    log = ListAuditLog()
    for n in range(1, 6):
        log.append(event(n))
    path = tmp_path / "audit.log"
    mirror = Mirror(path, log)
    assert mirror.copy_new() == 5
    original = list(log.stored)
    del log.stored[1:3]  # entries 2 and 3 go
    for n in range(6, 9):
        log.append(event(n))
    assert mirror.copy_new() == 3 and mirror.copy_new() == 0
    assert path.read_text().splitlines() == original + log.stored[3:]
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == list(range(1, 9))


def test_an_entry_of_the_wrong_types_is_named_not_a_crash() -> None:
    """Rewritten with ``"seq": "2"`` (or a time as text) and its hash recomputed: verify
    names it; reading and the CLI's filters leave it out."""
    lines, head = chain(3)
    for changes in ({"seq": "2"}, {"time": "yesterday"}, {"actor": 7}):
        tampered = [lines[0], rewritten(lines[1], **changes), lines[2]]
        problem = first_problem(tampered, head)
        assert problem is not None and (problem.seq, problem.kind) == (2, "altered")
        with pytest.raises(ValueError, match="wrong type"):
            audit.entry_of(tampered[1])
        assert [e.seq for e in audit.parsed(tampered)] == [1, 3]


def test_an_append_redis_refuses_is_logged_and_the_action_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_retry = Retry(NoBackoff(), 0)  # (redis-py retries a refused connection for seconds)
    gone = AuditLog(redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=no_retry))
    with pytest.raises(Unavailable, match="cannot write the audit log"):
        gone.append(event(1))
    assert gone.record(event(1, "token.create")) is None
    assert "audit entry lost (token.create t1 by user:u1)" in caplog.text
