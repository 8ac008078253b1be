"""Placement rules of the in-memory scheduler (no I/O)."""

from __future__ import annotations

import pytest

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.units import format_bytes, parse_cpus, parse_size
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.pool.scheduler import Scheduler
from tests.support.poolkit import GiB


def scheduler_with(*capacities: Resources) -> Scheduler:
    scheduler = Scheduler()
    for index, capacity in enumerate(capacities, start=1):
        worker = scheduler.upsert_worker(f"w{index}", f"w{index}", capacity)
        worker.connected = True
    return scheduler


def cpu(n: float, memory: int = GiB, gpus: int = 0) -> Resources:
    return Resources(int(n * 1000), memory, gpus)


def test_fifo_within_priority_and_higher_priority_first() -> None:
    scheduler = scheduler_with(cpu(1))
    for seq, priority in enumerate([0, 5, 0, 5]):
        score = (9 - priority) * 2**40 + seq
        scheduler.enqueue(f"t{seq}", score, 1, cpu(1))
    order = []
    for _ in range(4):
        (placement,) = scheduler.place()
        order.append(placement.task_id)
        scheduler.release(placement.task_id)
    assert order == ["t1", "t3", "t0", "t2"]


def test_a_worker_is_never_overcommitted_and_capacity_comes_back() -> None:
    scheduler = scheduler_with(cpu(2, 4 * GiB))
    for n in range(5):
        scheduler.enqueue(f"t{n}", n, 1, cpu(1, GiB))
    first = scheduler.place()
    assert [p.task_id for p in first] == ["t0", "t1"]
    assert scheduler.place() == []
    assert scheduler.workers["w1"].free == Resources(0, 2 * GiB, 0)
    scheduler.release("t0")
    scheduler.release("t0")  # idempotent
    assert [p.task_id for p in scheduler.place()] == ["t2"]


def test_memory_and_gpus_are_limits_too() -> None:
    scheduler = scheduler_with(cpu(8, 2 * GiB), cpu(8, 8 * GiB, gpus=1))
    scheduler.enqueue("big-memory", 1, 1, cpu(1, 6 * GiB))
    scheduler.enqueue("gpu", 2, 1, cpu(1, GiB, gpus=1))
    scheduler.enqueue("second-gpu", 3, 1, cpu(1, GiB, gpus=1))
    placed = {p.task_id: p.node_id for p in scheduler.place()}
    assert placed == {"big-memory": "w2", "gpu": "w2"}
    assert "second-gpu" in scheduler.pending


def test_smaller_tasks_backfill_around_one_that_does_not_fit_yet() -> None:
    scheduler = scheduler_with(cpu(2, 4 * GiB))
    scheduler.enqueue("running", 0, 1, cpu(1))
    scheduler.place()
    scheduler.enqueue("needs-two", 1, 1, cpu(2))
    scheduler.enqueue("needs-one", 2, 1, cpu(1))
    assert [p.task_id for p in scheduler.place()] == ["needs-one"]
    assert list(scheduler.pending) == ["needs-two"]


def test_tasks_spread_to_the_roomiest_worker() -> None:
    scheduler = scheduler_with(cpu(4, 8 * GiB), cpu(1, 2 * GiB))
    for n in range(5):
        scheduler.enqueue(f"t{n}", n, 1, cpu(1, GiB))
    nodes = [p.node_id for p in scheduler.place()]
    assert sorted(nodes) == ["w1", "w1", "w1", "w1", "w2"]


def test_draining_and_disconnected_workers_get_nothing() -> None:
    scheduler = scheduler_with(cpu(2), cpu(2))
    scheduler.workers["w1"].draining = True
    scheduler.workers["w2"].connected = False
    scheduler.enqueue("t", 0, 1, cpu(1))
    assert scheduler.place() == []
    scheduler.workers["w2"].connected = True
    assert [p.node_id for p in scheduler.place()] == ["w2"]


def test_dequeue_removes_a_cancelled_task() -> None:
    scheduler = scheduler_with(cpu(1))
    scheduler.enqueue("a", 0, 1, cpu(1))
    scheduler.enqueue("b", 1, 1, cpu(1))
    scheduler.dequeue("a")
    assert [p.task_id for p in scheduler.place()] == ["b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("1024", 1024), ("64k", 64 << 10)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("2", 2000), ("0.5", 500), ("250m", 250)])
def test_parse_cpus(text: str, expected: int) -> None:
    assert parse_cpus(text) == expected


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (999 << 20, "999 MiB"),
        (1000 << 20, "1000 MiB"),  # not "1e+03 MiB"
        ((1 << 20) - 1, "1024 KiB"),
        (5000 << 40, "5000 TiB"),
    ],
)
def test_format_bytes(n: int, shown: str) -> None:
    assert format_bytes(n) == shown


@pytest.mark.parametrize("text", ["", "lots", "-1", "0", "1.5X"])
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text) if text.endswith("X") else parse_cpus(text)


class CountingResources(Resources):
    """A request that counts how often the scheduler asks whether it fits."""

    checks = 0

    def fits_in(self, other: Resources) -> bool:
        CountingResources.checks += 1
        return super().fits_in(other)


def test_a_pass_costs_the_same_however_long_the_queue() -> None:
    """No free CPU: nothing is looked at. Tasks that fit nowhere: each request shape is
    checked once per pass, not once per queued task (and at most ``scan_limit`` of them are
    passed over); the queue keeps its order."""
    scheduler = scheduler_with(cpu(1))
    scheduler.enqueue("running", 0, 1, cpu(1))
    (placed,) = scheduler.place()
    for n in range(scheduler.scan_limit - 1):
        scheduler.enqueue(f"t{n}", 1 + n, 1, CountingResources(2000, GiB, 0))
    CountingResources.checks = 0
    assert scheduler.place() == []
    assert CountingResources.checks == 0  # the one worker is full
    scheduler.release(placed.task_id)
    assert scheduler.place() == [] and CountingResources.checks == 1  # 2 CPUs fit nowhere
    scheduler.enqueue("small", 10_000, 1, cpu(0.5))
    assert [p.task_id for p in scheduler.place()] == ["small"]  # backfill behind them
    scheduler.upsert_worker("w2", "w2", cpu(4, 2 * GiB)).connected = True
    assert [p.task_id for p in scheduler.place()] == ["t0", "t1"]  # in order, once room comes


def test_a_task_queued_again_or_dequeued_is_placed_once_or_not_at_all() -> None:
    scheduler = scheduler_with(cpu(4, 8 * GiB))
    for n in range(3):
        scheduler.enqueue(f"t{n}", n, 1, cpu(1))
    scheduler.enqueue("t1", 1, 2, cpu(1))  # its next attempt replaces the queued one
    scheduler.dequeue("t2")
    placements = scheduler.place()
    assert [(p.task_id, p.attempt) for p in placements] == [("t0", 1), ("t1", 2)]
    assert scheduler.place() == [] and scheduler.queued_ids() == []
