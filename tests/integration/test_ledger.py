"""The CPT ledger on a real Redis: conservation, no overdraft, idempotency, audit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import random
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemind_cluster.core import errors
from hivemind_cluster.core.units import MICRO, format_cpt, parse_cpt
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.accounts import ESCROW, REGISTRATION_GRANT, TOTAL_SUPPLY, TREASURY
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool import store
from hivemind_cluster.pool.accounting import Accounting
from hivemind_cluster.pool.ledger import AsyncLedger, Ledger
from hivemind_cluster.pool.taskstore import TaskStore
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import BUSYBOX_SPEC
from tests.support.scratch import sorted_set
from tests.support.settle_outstanding import RATES

pytestmark = pytest.mark.privileged
SPEC = dataclasses.replace(BUSYBOX_SPEC, owner="u1")


@pytest.fixture
def ledger(client: redis.Redis) -> Ledger:
    book = Ledger(client)
    book.genesis()
    return book


def test_genesis_happens_once_and_accounts_get_their_grant(ledger: Ledger) -> None:
    assert ledger.genesis() == TOTAL_SUPPLY
    first = ledger.open_account("alice", "user")
    again = ledger.open_account("alice", "user")
    assert first == again and first.amount == REGISTRATION_GRANT == 150 * MICRO
    assert ledger.balance("alice") == REGISTRATION_GRANT
    assert ledger.balance(TREASURY) == TOTAL_SUPPLY - REGISTRATION_GRANT
    assert ledger.audit()["ok"] is True


def test_a_transfer_moves_exactly_and_an_overdraft_changes_nothing(ledger: Ledger) -> None:
    ledger.open_account("alice", "user")
    ledger.open_account("w1", "worker")
    entry = ledger.transfer("alice", "w1", 1_500_000, "task t1", key="pay:t1", task="t1")
    assert (entry.source, entry.target, entry.amount, entry.task) == (
        "alice",
        "w1",
        1_500_000,
        "t1",
    )
    assert ledger.balance("alice") == REGISTRATION_GRANT - 1_500_000
    before = ledger.audit()
    with pytest.raises(errors.Conflict, match="insufficient balance in alice"):
        ledger.transfer("alice", "w1", REGISTRATION_GRANT, "too much", key="pay:t2")
    assert ledger.audit() == before
    assert ledger.balance("alice") == REGISTRATION_GRANT - 1_500_000


def test_replaying_an_idempotency_key_returns_the_original_entry(ledger: Ledger) -> None:
    ledger.open_account("alice", "user")
    ledger.open_account("proj", "project")
    first = ledger.transfer("alice", "proj", 10, "tip", key="tip:1")
    replay = ledger.transfer("alice", "proj", 999, "tip again", key="tip:1")
    assert replay == first
    assert ledger.balance("proj") == REGISTRATION_GRANT + 10
    assert ledger.audit()["journal_entries"] == 4  # genesis, two grants, one tip


@pytest.mark.parametrize(
    ("source", "target", "amount", "error"),
    [
        ("alice", "nobody", 1, errors.NotFound),
        ("nobody", "alice", 1, errors.NotFound),
        ("alice", "alice", 1, errors.InvalidInput),
        ("alice", "bob", 0, errors.InvalidInput),
        ("alice", "bob", -5, errors.InvalidInput),
        ("alice", "bob", 10**18, errors.InvalidInput),
    ],
)
def test_bad_transfers_are_refused(
    ledger: Ledger, source: str, target: str, amount: int, error: type[Exception]
) -> None:
    ledger.open_account("alice", "user")
    ledger.open_account("bob", "user")
    before = ledger.audit()
    with pytest.raises(error):
        ledger.transfer(source, target, amount, "bad", key=f"bad:{source}:{target}:{amount}")
    assert ledger.audit() == before


@pytest.mark.parametrize(
    ("changed", "noticed", "other", "total"),
    [
        (keys.LEDGER_BALANCES, "mismatched_accounts", "mismatched_earnings", TOTAL_SUPPLY + 1),
        (keys.LEDGER_EARNED, "mismatched_earnings", "mismatched_accounts", TOTAL_SUPPLY),
    ],
)
def test_the_audit_notices_a_figure_changed_behind_its_back(
    ledger: Ledger, client: redis.Redis, changed: str, noticed: str, other: str, total: int
) -> None:
    ledger.open_account("w1", "worker")
    client.hincrby(changed, "w1", 1)
    report = ledger.audit()
    assert report["ok"] is False and report[noticed] == ["w1"] and report[other] == []
    assert report["sum_of_balances"] == total


@pytest.mark.parametrize(
    ("text", "micro"), [("1", MICRO), ("1.5", 1_500_000), ("0.000001", 1), ("150", 150 * MICRO)]
)
def test_cpt_amounts_parse_and_format_exactly(text: str, micro: int) -> None:
    assert parse_cpt(text) == micro
    assert format_cpt(micro) == text


@pytest.mark.parametrize("text", ["0", "-1", "0.0000001", "abc", "1e400", "NaN", ""])
def test_bad_cpt_amounts_are_refused(text: str) -> None:
    with pytest.raises(errors.InvalidInput):
        parse_cpt(text)


ACCOUNTS = [f"acct{n}" for n in range(6)]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.sampled_from(ACCOUNTS)),
        st.tuples(
            st.just("transfer"),
            st.sampled_from(ACCOUNTS),
            st.sampled_from(ACCOUNTS),
            st.integers(min_value=1, max_value=400 * MICRO),
            st.integers(min_value=0, max_value=15),  # idempotency keys repeat: duplicates
        ),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_any_sequence_conserves_supply_and_never_overdraws(
    redis_server: RedisServer, ops: list[tuple[Any, ...]]
) -> None:
    client = store.connect(redis_server.bind, redis_server.port, redis_server.password)
    client.flushall()
    book = Ledger(client)
    book.genesis()
    expected = {TREASURY: TOTAL_SUPPLY, "escrow": 0}
    seen_keys: set[str] = set()
    for op in ops:
        if op[0] == "open":
            name = str(op[1])
            book.open_account(name, "user")
            if name not in expected:
                expected[name] = REGISTRATION_GRANT
                expected[TREASURY] -= REGISTRATION_GRANT
            continue
        _, source, target, amount, key_number = op
        key = f"k{key_number}"
        try:
            book.transfer(str(source), str(target), int(amount), "random", key=key)
        except (errors.Conflict, errors.NotFound, errors.InvalidInput):
            continue
        if key not in seen_keys:
            seen_keys.add(key)
            expected[str(source)] -= int(amount)
            expected[str(target)] = expected.get(str(target), 0) + int(amount)
    report = book.audit()
    assert report["ok"], report
    assert {a["account"]: a["balance"] for a in book.accounts()} == expected
    assert all(balance >= 0 for balance in expected.values())
    client.close()


def _hammer(address: tuple[str, int, str], worker: int, count: int) -> None:
    client = store.connect(*address)
    book = Ledger(client)
    chance = random.Random(worker)
    for n in range(count):
        source, target = chance.sample(range(50), 2)
        amount = chance.randint(1, 60 * MICRO)
        with contextlib.suppress(errors.Conflict):  # insufficient: refused, nothing changed
            book.transfer(f"a{source}", f"a{target}", amount, "stress", key=f"s{worker}:{n}")
    client.close()


def test_eight_processes_of_random_transfers_conserve_everything(
    ledger: Ledger, redis_server: RedisServer
) -> None:
    for n in range(50):
        ledger.open_account(f"a{n}", "user")
    address = (redis_server.bind, redis_server.port, redis_server.password)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(address, w, 1000)) for w in range(8)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    report = ledger.audit()
    assert report["ok"], report
    assert report["sum_of_balances"] == TOTAL_SUPPLY
    assert all(a["balance"] >= 0 for a in ledger.accounts())
    assert report["journal_entries"] > 1 + 50 + 1000  # most transfers went through


task_operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["u1", "u2"]), st.integers(1, 80 * MICRO)),
        st.tuples(
            st.just("finish"),
            st.integers(0, 9),
            st.sampled_from(["succeeded", "failed", "cancelled", "timed_out"]),
            st.floats(0, 5000, allow_nan=False),
        ),
        st.tuples(st.just("cancel"), st.integers(0, 9)),
        st.tuples(st.just("settle"), st.integers(0, 9)),  # duplicate deliveries
        st.tuples(st.just("tip"), st.sampled_from(["u1", "u2"]), st.integers(1, 30 * MICRO)),
    ),
    max_size=30,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=task_operations)
def test_submissions_settlements_refunds_and_tips_conserve_everything(
    redis_server: RedisServer, ops: list[tuple[Any, ...]]
) -> None:
    client = store.connect(redis_server.bind, redis_server.port, redis_server.password)
    client.flushall()
    asyncio.run(_play(redis_server, ops))
    book = Ledger(client)
    report = book.audit()
    assert report["ok"], report
    balances = {a["account"]: a["balance"] for a in book.accounts()}
    assert all(v >= 0 for v in balances.values())
    unsettled_caps = 0
    for task_id in sorted_set(client, keys.TASKS):
        raw = client.hgetall(f"hm:task:{task_id}")
        if raw.get("settled") != "1":
            unsettled_caps += int(raw["price_cap"])
        else:
            assert 0 <= int(raw["cost"]) <= int(raw["price_cap"])
    assert balances[ESCROW] == unsettled_caps  # escrow holds exactly the open price caps
    client.close()


async def _play(server: RedisServer, ops: list[tuple[Any, ...]]) -> None:
    db = aioredis.Redis(
        host=server.bind, port=server.port, password=server.password, decode_responses=True
    )
    tasks = TaskStore(db, 1 << 20)
    accounting = Accounting(AsyncLedger(db), RATES, tasks)
    await accounting.start()
    await accounting.open("w1", "worker")
    await accounting.open("proj", "project")
    submitted: list[str] = []
    for op in ops:
        kind = op[0]
        if kind == "submit":
            task_id = f"t{len(submitted):012x}"
            try:
                await accounting.hold(op[1], task_id, op[2])
            except errors.Conflict:  # insufficient balance: refused, nothing held
                continue
            spec = dataclasses.replace(SPEC, owner=op[1])
            await tasks.submit(spec, task_id=task_id, price_cap=op[2])
            submitted.append(task_id)
        elif kind == "finish" and op[1] < len(submitted):
            task_id = submitted[op[1]]
            record = await tasks.get(task_id)
            await tasks.assign_many([(task_id, record.attempt, "w1")])
            usage = pb.Usage(cpu_seconds=op[3], peak_memory_bytes=10**9, wall_seconds=op[3])
            result = pb.TaskResult(
                task_id=task_id, attempt=record.attempt, status=op[2], usage=usage
            )
            try:
                await tasks.finish("w1", result)
            except errors.StaleAttempt:  # the task had ended already: the result is refused
                continue
            await accounting.settle(task_id)
        elif kind == "cancel" and op[1] < len(submitted):
            try:
                await tasks.cancel(submitted[op[1]])
            except errors.Conflict:  # the task had ended already
                continue
            await accounting.settle(submitted[op[1]])
        elif kind == "settle" and op[1] < len(submitted):
            await accounting.settle(submitted[op[1]])
        elif kind == "tip":
            with contextlib.suppress(errors.Conflict):  # insufficient balance: refused
                await accounting.tip(op[1], "proj", op[2], key="")
    await db.aclose()
