"""The rate card bills what a task held: wall time * each requested resource * its rate,
in integer micro-CPT, each part rounded up; the price cap is the same formula at the timeout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.pricing import Part, RateCard
from hivemind_cluster.model.resources import Resources

RATES = RateCard(cpu_second=100, gb_second=50, gpu_second=2000)
MIB = 1 << 20


def test_the_cost_is_wall_time_times_every_requested_resource_at_its_rate() -> None:
    # 1 CPU and 256 MiB held for 15 s: 15 * 100 + 15 * 0.268435456 * 50 = 1500 + 201.33.
    charge = RATES.charge(Resources(1000, 256 * MIB, 0), 15)
    assert charge.wall_seconds == 15.0
    assert charge.parts == (
        Part("CPU", 1.0, 100, 1500),
        Part("GB", 0.268435456, 50, 202),
        Part("GPU", 0.0, 2000, 0),
    )
    assert charge.total == RATES.cost(Resources(1000, 256 * MIB, 0), 15) == 1702


def test_fractional_cpus_gigabytes_and_gpus_each_count() -> None:
    # 2.5 CPUs, exactly 2 GB and 1 GPU for 1.5 s: 375 + 150 + 3000.
    charge = RATES.charge(Resources(2500, 2 * 10**9, 1), 1.5)
    assert [p.cost for p in charge.parts] == [375, 150, 3000]
    assert charge.total == 3525


def test_what_it_measurably_used_does_not_change_the_price() -> None:
    """Sleeping or computing, the same request for the same wall time costs the same: the
    function only sees the request and the wall time."""
    request = Resources(1000, 256 * MIB, 0)
    assert RATES.cost(request, 3.0) == 300 + 41  # 0.268435456 GB * 3 s * 50 = 40.27 → 41


def test_each_part_rounds_up_to_a_whole_micro_cpt() -> None:
    request = Resources(1, 1, 0)  # a thousandth of a CPU, one byte
    assert [p.cost for p in RATES.charge(request, 0.000001).parts] == [1, 1, 0]
    assert RATES.cost(request, 0) == 0
    assert RATES.cost(Resources(1000, 0, 0), 0.010001) == 2  # 1.0001 µCPT → 2
    assert RATES.cost(Resources(1000, 0, 0), 0.01) == 1  # exactly 1 µCPT stays 1


def test_wall_time_counts_to_the_microsecond_and_never_below_zero() -> None:
    cpu = Resources(1000, 0, 0)
    assert RATES.cost(cpu, 1.0000004) == RATES.cost(cpu, 1.0) == 100
    assert RATES.cost(cpu, 1.0000006) == 101  # 1.000001 s rounds its part up
    assert RATES.cost(cpu, -5) == 0
    assert RATES.cost(cpu, "2.5") == 250  # as stored in a record's usage JSON


@pytest.mark.parametrize(
    ("request_", "timeout"),
    [
        (Resources(1000, 512 * MIB, 0), 3600),
        (Resources(250, 64 * MIB, 0), 1),
        (Resources(8000, 32 << 30, 2), 86400),
    ],
)
def test_the_price_cap_is_the_whole_request_for_the_whole_timeout(
    request_: Resources, timeout: int
) -> None:
    cap = RATES.price_cap(request_, timeout)
    assert cap == RATES.cost(request_, timeout)
    cpu = -(-request_.cpu_millis * timeout * 100 // 1000)
    memory = -(-request_.memory_bytes * timeout * 50 // 10**9)
    assert cap == cpu + memory + request_.gpus * timeout * 2000


@given(
    cpu_millis=st.integers(1, 64_000),
    memory_bytes=st.integers(1, 1 << 40),
    gpus=st.integers(0, 8),
    timeout=st.integers(1, 86400),
    wall_micros=st.integers(0, 86400 * 10**6),
)
def test_a_task_that_ends_within_its_timeout_never_costs_more_than_its_cap(
    cpu_millis: int, memory_bytes: int, gpus: int, timeout: int, wall_micros: int
) -> None:
    request = Resources(cpu_millis, memory_bytes, gpus)
    wall = min(wall_micros, timeout * 10**6) / 10**6
    assert 0 <= RATES.cost(request, wall) <= RATES.price_cap(request, timeout)


def test_the_default_rate_card_bills_an_hour_of_one_cpu_and_512_mib_about_046_cpt() -> None:
    card = RateCard.from_settings(HubSettings(state_dir="unused"))
    assert (card.cpu_second, card.gb_second, card.gpu_second) == (100, 50, 2000)
    assert card.cost(Resources(1000, 512 * MIB, 0), 3600) == 456_637
