"""A price cap is a limit: the wall time it buys for a task's request, computed so that the cost
never exceeds it; the agent stops the task there, the pool backs it up, and a cap too small to
buy a second of the request is refused at submission, naming the least it could be."""

from __future__ import annotations

import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hivemind_cluster.agent.executor import PRICE_CAP, judge, run_limit
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import format_cpt
from hivemind_cluster.model.pricing import MICROSECONDS, MIN_CAP_SECONDS, RateCard
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.spec import check_submission
from hivemind_cluster.model.states import TaskState
from hivemind_cluster.pool import watchdog
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.tasks import a_task

RATES = RateCard(cpu_second=100, gb_second=50, gpu_second=2000)
HELD = Resources(1000, 256 << 20, 0)  # 1 CPU, 256 MiB: 113.42 µCPT a second
ONE_MICROSECOND = 1 / MICROSECONDS

requests = st.builds(
    Resources,
    st.integers(1, 1024 * 1000),
    st.integers(6 << 20, 1 << 42),
    st.integers(0, 64),
)
rate_cards = st.builds(
    RateCard, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)
)


@given(rate_cards, requests, st.integers(1, 10**15))
def test_the_time_a_cap_buys_never_costs_more_than_the_cap_and_a_microsecond_more_does(
    rates: RateCard, request: Resources, cap: int
) -> None:
    bought = rates.seconds_bought(request, cap)
    # Beyond any timeout (a day at most), a float no longer holds every microsecond.
    assume(bought is None or bought < 10**8)
    if bought is None:  # the request costs nothing at these rates
        assert rates.cost(request, 10**6) == 0
        return
    assert rates.cost(request, bought) <= cap
    assert rates.cost(request, bought + ONE_MICROSECOND) > cap
    micros = bought * MICROSECONDS
    assert abs(micros - round(micros)) < 1e-3  # whole microseconds


def test_a_cap_of_three_seconds_worth_buys_three_seconds() -> None:
    cap = RATES.cost(HELD, 3)  # 300 + 40.27 → 341 µCPT
    assert cap == 341
    bought = RATES.seconds_bought(HELD, cap)
    assert bought is not None and 3.0 <= bought < 3.01
    assert bought == 3.0  # a microsecond more and the CPU part rounds up to 301
    # Each charged part costs a whole µCPT from the first microsecond: 1 µCPT buys nothing.
    assert RATES.seconds_bought(HELD, 1) == 0.0


def test_the_cap_stops_a_task_only_when_it_comes_before_the_timeout() -> None:
    cap = RATES.cost(HELD, 3)
    assert RATES.price_cap_seconds(HELD, 60, cap) == RATES.seconds_bought(HELD, cap)
    # The default cap is the request held for the whole timeout: the timeout comes first.
    assert RATES.price_cap_seconds(HELD, 60, RATES.price_cap(HELD, 60)) == 0
    assert RATES.price_cap_seconds(HELD, 2, cap) == 0
    assert RateCard(0, 0, 0).price_cap_seconds(HELD, 60, 1) == 0  # free: nothing to stop


def test_a_task_that_used_all_its_cap_bought_pays_exactly_the_cap() -> None:
    cap = RATES.cost(HELD, 3)
    bought = RATES.seconds_bought(HELD, cap)
    assert bought is not None
    assert RATES.capped_cost(HELD, bought, cap) == cap
    assert RATES.capped_cost(HELD, bought + 2.5, cap) == cap
    assert RATES.capped_cost(HELD, 1.0, cap) == RATES.cost(HELD, 1.0) < cap
    assert RATES.capped_cost(HELD, 0, cap) == 0


def submission(max_cost: int) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        image="hivemind/busybox:latest",
        command=["x"],
        resources=HELD.to_proto(),
        timeout_seconds=60,
        max_cost=max_cost,
    )


def test_a_cap_that_buys_less_than_a_second_is_refused_naming_the_least_it_may_be() -> None:
    settings = HubSettings(state_dir="unused")
    least = RateCard.from_settings(settings).cost(HELD, MIN_CAP_SECONDS)
    with pytest.raises(InvalidInput) as refused:
        check_submission(submission(1), "op", settings)
    assert refused.value.message == (
        "max cost 0.000001 CPT buys only 0 s of 1 CPU, 256 MiB memory at the rate card; "
        f"the least it may be is {format_cpt(least)} CPT (1 s)"
    )
    assert check_submission(submission(least), "op", settings).timeout_seconds == 60
    assert check_submission(submission(0), "op", settings).timeout_seconds == 60


def test_the_agent_stops_a_task_at_the_earlier_of_its_timeout_and_its_cap() -> None:
    task = a_task("hivemind/busybox:latest", ["x"], timeout_seconds=60)
    assert run_limit(task) == (60, TaskState.TIMED_OUT)
    assert run_limit(a_task("i", [], timeout_seconds=60, price_cap_seconds=3.0)) == (
        3.0,
        PRICE_CAP,
    )
    assert run_limit(a_task("i", [], timeout_seconds=2, price_cap_seconds=3.0)) == (
        2,
        TaskState.TIMED_OUT,
    )


def test_a_task_the_cap_stopped_failed_saying_so() -> None:
    task = a_task("i", [], timeout_seconds=60, price_cap_seconds=3.0)
    status, error = judge(task, PRICE_CAP, 137, False, False)
    assert (status, error) == (TaskState.FAILED, "price cap reached after 3s")


def record(price_cap: int, timeout: int = 60) -> TaskRecord:
    return TaskRecord(
        owner="op",
        name="",
        image="hivemind/busybox:latest",
        command=["x"],
        env={},
        request=HELD,
        timeout_seconds=timeout,
        priority=0,
        max_attempts=1,
        network=False,
        id="t1",
        status=TaskState.ASSIGNED,
        attempt=1,
        node_id="w1",
        score=0,
        submitted_at=0,
        started_at=0,
        ended_at=0,
        exit_code=None,
        error="",
        price_cap=price_cap,
    )


def test_the_pool_ends_a_started_attempt_past_its_cap_time_when_its_agent_did_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watchdog, "ATTEMPT_GRACE", 1)
    dog = watchdog.AttemptWatchdog(RATES)
    cap = RATES.cost(HELD, 3)
    assert dog.watch(record(cap), 1, since=time.monotonic() - 3.5) == RATES.seconds_bought(
        HELD, cap
    )
    assert dog.overdue() == []  # not started: the start deadline applies
    dog.mark_started("t1", 1)
    assert dog.overdue() == []  # 3.5 s < 3 s + 1 s grace
    dog.watch(record(cap), 1, since=time.monotonic() - 4.5)
    (overdue,) = dog.overdue()
    result = overdue.timed_out(overdue.reason("w1"))
    assert (result.status, result.exit_code) == (TaskState.FAILED, -1)
    assert result.error == "price cap reached: no result 1s after its cap ran out (3s)"


def test_an_uncapped_attempt_is_still_given_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "ATTEMPT_GRACE", 1)
    dog = watchdog.AttemptWatchdog(RATES)
    assert dog.watch(record(RATES.price_cap(HELD, 5), timeout=5), 1, time.monotonic() - 6.5) == 0
    dog.mark_started("t1", 1)
    (overdue,) = dog.overdue()
    result = overdue.timed_out(overdue.reason("w1"))
    assert (result.status, result.error) == (
        TaskState.TIMED_OUT,
        "no result 1s after its 5s timeout",
    )
