"""An attempt's usage over time on the agent: readings become samples at most every few
seconds (CPU cores over the interval, memory at its end), the worker's heartbeats take the
samples not sent yet, a reconnect sends the last ones again; and the cgroup and ``docker
stats`` readings they come from give the memory in use, not only its peak."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_cluster.agent import usage
from hivemind_cluster.agent.usage import (
    Counters,
    cgroup_v1_reader,
    cgroup_v2_reader,
    stats_counters,
)
from hivemind_cluster.agent.usagesamples import (
    KEPT_SAMPLES,
    UsageBoard,
    UsageSample,
    UsageSeries,
)

WALL = 1_700_000_000.0
MIB = 1 << 20


def feed(series: UsageSeries, readings: list[tuple[float, float, int]]) -> None:
    """Readings (seconds since the start, CPU seconds used so far, memory in use)."""
    for at, cpu_seconds, memory in readings:
        series.reading(cpu_seconds, memory, monotonic=at, wall=WALL + at)


def test_readings_become_one_sample_per_interval_with_the_cores_used_over_it() -> None:
    series = UsageSeries(every=5)
    # Polled every second: one core busy for 5 s, then half a core for 5 s.
    feed(series, [(t, float(t), 10 * MIB) for t in range(6)])
    feed(series, [(5 + t, 5 + t / 2, 20 * MIB) for t in range(1, 6)])
    assert series.take_unsent() == [
        UsageSample(WALL + 5, 1.0, 10 * MIB),
        UsageSample(WALL + 10, 0.5, 20 * MIB),
    ]
    assert series.take_unsent() == []


def test_the_runs_last_interval_is_a_sample_when_long_enough() -> None:
    series = UsageSeries(every=5)
    feed(series, [(0, 0.0, MIB), (5, 5.0, MIB), (7, 6.0, 2 * MIB)])
    series.finish()
    assert [s.time - WALL for s in series.take_unsent()] == [5, 7]
    short = UsageSeries(every=5)
    feed(short, [(0, 0.0, MIB), (5, 5.0, MIB), (5.5, 5.5, MIB)])
    short.finish()  # half a second: no sample of its own
    assert [s.time - WALL for s in short.take_unsent()] == [5]


def test_no_time_or_a_counter_that_went_back_never_gives_negative_or_infinite_cores() -> None:
    series = UsageSeries(every=0)
    feed(series, [(1, 10.0, MIB), (1, 12.0, MIB), (2, 3.0, MIB)])
    assert [s.cpu_cores for s in series.take_unsent()] == [0.0, 0.0]


def test_a_reconnect_sends_the_last_kept_samples_again() -> None:
    series = UsageSeries(every=1)
    feed(series, [(t, 0.0, MIB) for t in range(KEPT_SAMPLES + 6)])
    first = series.take_unsent()
    assert len(first) == KEPT_SAMPLES  # the oldest were dropped while nobody took them
    assert not series.has_unsent()
    series.rewind()
    assert series.has_unsent()
    assert series.take_unsent() == first


def test_the_board_gives_each_attempts_unsent_samples_and_keeps_a_closed_one_until_sent() -> None:
    board = UsageBoard()
    one, two = board.open("t1", 1), board.open("t2", 3)
    assert board.open("t1", 1) is one
    one.every = two.every = 1
    feed(one, [(0, 0.0, MIB), (1, 1.0, 2 * MIB)])
    beat = board.take_unsent()
    assert [(u.task_id, u.attempt, len(u.samples)) for u in beat] == [("t1", 1, 1)]
    assert (beat[0].samples[0].cpu_cores, beat[0].samples[0].memory_bytes) == (1.0, 2 * MIB)
    feed(two, [(0, 0.0, MIB), (1, 0.5, MIB)])
    board.close(("t2", 3))  # its last sample is still to go
    board.close(("t1", 1))  # nothing left to send: gone at once
    assert len(board) == 1
    assert [(u.task_id, u.attempt) for u in board.take_unsent()] == [("t2", 3)]
    assert len(board) == 0 and board.take_unsent() == []


def test_a_rewound_board_sends_every_open_attempts_kept_samples_again() -> None:
    board = UsageBoard()
    series = board.open("t1", 1)
    series.every = 1
    feed(series, [(0, 0.0, MIB), (1, 1.0, MIB), (2, 2.0, MIB)])
    sent = board.take_unsent()
    board.rewind()
    assert board.take_unsent() == sent


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_gives_the_memory_in_use_and_its_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage, "CGROUP_ROOT", tmp_path)
    write(tmp_path / "cpuacct/docker/c1/cpuacct.usage", "2500000000\n")
    write(tmp_path / "memory/docker/c1/memory.usage_in_bytes", f"{3 * MIB}\n")
    write(tmp_path / "memory/docker/c1/memory.max_usage_in_bytes", f"{8 * MIB}\n")
    reader = cgroup_v1_reader("c1")
    assert reader is not None and reader() == Counters(2.5, 3 * MIB, 8 * MIB)
    assert cgroup_v1_reader("other") is None


@pytest.mark.parametrize("peak", [True, False], ids=["memory.peak", "no memory.peak"])
def test_cgroup_v2_gives_the_memory_in_use_and_its_peak_where_the_kernel_keeps_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peak: bool
) -> None:
    monkeypatch.setattr(usage, "CGROUP_ROOT", tmp_path)
    group = tmp_path / "system.slice/docker-c2.scope"
    write(group / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n")
    write(group / "memory.current", f"{4 * MIB}\n")
    if peak:
        write(group / "memory.peak", f"{9 * MIB}\n")
    reader = cgroup_v2_reader("c2")
    assert reader is not None
    assert reader() == Counters(1.5, 4 * MIB, 9 * MIB if peak else 4 * MIB)


def test_docker_stats_give_the_memory_in_use_and_the_peak_where_there_is_one() -> None:
    cpu = {"cpu_usage": {"total_usage": 3_000_000_000}}
    v1 = {"cpu_stats": cpu, "memory_stats": {"usage": 5 * MIB, "max_usage": 7 * MIB}}
    assert stats_counters(v1) == Counters(3.0, 5 * MIB, 7 * MIB)
    v2 = {"cpu_stats": cpu, "memory_stats": {"usage": 5 * MIB}}
    assert stats_counters(v2) == Counters(3.0, 5 * MIB, 5 * MIB)
    assert stats_counters({}) == Counters(0.0, 0, 0)
