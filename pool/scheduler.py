"""Placement: which queued task goes to which worker. Pure, in memory, no I/O.

The pool owns one ``Scheduler`` and is its only writer, so capacity is never double-booked:
``place()`` reserves a task's request on the chosen worker before anything else can run,
and ``release()`` returns it when the attempt ends. Redis holds the durable truth; the pool
rebuilds this mirror from it at start and whenever a worker registers.

Order: higher priority first, then submission order (FIFO). A task that fits nowhere right
now keeps its place, and later tasks that do fit are placed meanwhile (backfill), so one
large task does not stall a cluster of small ones; a pass passes over at most
``scan_limit`` queued tasks that fit nowhere.

The queue is a heap in that order, so submitting is O(log n) and a pass that places k tasks
costs O(k log n), whatever the queue's length; a pass with no free CPU anywhere returns at
once. Entries are removed lazily: ``pending`` is the truth, and a heap entry that is no
longer the task's current ``Pending`` (dequeued, placed, queued again) is dropped when met.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from hivemind_cluster.model.resources import Resources


class Worker:
    """A worker's capacity and what is booked on it; ``free`` is kept up to date."""

    def __init__(self, node_id: str, name: str, capacity: Resources) -> None:
        self.node_id = node_id
        self.name = name
        self.connected = False
        self.draining = False
        self._capacity = capacity
        self._allocated = Resources()
        self.free = capacity

    @property
    def capacity(self) -> Resources:
        return self._capacity

    @capacity.setter
    def capacity(self, value: Resources) -> None:
        self._capacity = value
        self.free = value - self._allocated

    @property
    def allocated(self) -> Resources:
        return self._allocated

    @allocated.setter
    def allocated(self, value: Resources) -> None:
        self._allocated = value
        self.free = self._capacity - value

    @property
    def schedulable(self) -> bool:
        return self.connected and not self.draining


@dataclass(frozen=True, order=True)
class Pending:
    score: float
    task_id: str
    attempt: int = field(compare=False)
    request: Resources = field(compare=False)


@dataclass(frozen=True)
class Placement:
    task_id: str
    attempt: int
    node_id: str
    request: Resources


class Scheduler:
    def __init__(self, scan_limit: int = 2000) -> None:
        self.workers: dict[str, Worker] = {}
        self.pending: dict[str, Pending] = {}
        # task -> (node, request, attempt) booked on that node
        self.allocations: dict[str, tuple[str, Resources, int]] = {}
        self.scan_limit = scan_limit
        self._heap: list[Pending] = []

    # ---- workers -------------------------------------------------------------------------

    def upsert_worker(self, node_id: str, name: str, capacity: Resources) -> Worker:
        worker = self.workers.get(node_id)
        if worker is None:
            worker = self.workers[node_id] = Worker(node_id, name, capacity)
        else:
            worker.name, worker.capacity = name, capacity
        return worker

    def stop_placing_on(self, node_id: str) -> None:
        """Place nothing on the worker until it is marked connected again."""
        worker = self.workers.get(node_id)
        if worker is not None:
            worker.connected = False

    def connected_totals(self) -> tuple[Resources, Resources]:
        """The capacity and the allocation of the connected workers, summed."""
        capacity = allocated = Resources(0, 0, 0)
        for worker in list(self.workers.values()):
            if worker.connected:
                capacity, allocated = capacity + worker.capacity, allocated + worker.allocated
        return capacity, allocated

    def set_draining(self, node_id: str, draining: bool) -> bool:
        """Record whether the worker is draining; True when that changed."""
        worker = self.workers.get(node_id)
        if worker is None or worker.draining == draining:
            return False
        worker.draining = draining
        return True

    # ---- queue ---------------------------------------------------------------------------

    def enqueue(self, task_id: str, score: float, attempt: int, request: Resources) -> None:
        """Queue an attempt; ignored while an attempt of the task still holds capacity."""
        if task_id in self.allocations:
            return
        item = self.pending[task_id] = Pending(score, task_id, attempt, request)
        heapq.heappush(self._heap, item)
        if len(self._heap) > 2 * len(self.pending) + 64:  # mostly dropped entries: rebuild
            self._heap = list(self.pending.values())
            heapq.heapify(self._heap)

    def dequeue(self, task_id: str) -> None:
        self.pending.pop(task_id, None)

    def queued_ids(self) -> list[str]:
        return list(self.pending)

    def tracks(self, task_id: str) -> bool:
        """Whether the task is queued here or an attempt of it holds capacity."""
        return task_id in self.pending or task_id in self.allocations

    def place(self) -> list[Placement]:
        """Reserve capacity for every queued task that fits now, in queue order."""
        if not self.pending:
            return []
        candidates = [w for w in self.workers.values() if w.schedulable]
        if not candidates:
            return []
        ceiling = _ceiling(candidates)
        placements: list[Placement] = []
        skipped: list[Pending] = []  # queued tasks that fit nowhere now: back in the heap
        refused: set[Resources] = set()  # requests that did not fit in this pass
        while self._heap and ceiling.cpu_millis > 0 and len(skipped) < self.scan_limit:
            item = heapq.heappop(self._heap)
            if self.pending.get(item.task_id) is not item:
                continue  # dequeued, placed or queued again since it was pushed
            worker = None
            if item.request not in refused and item.request.fits_in(ceiling):
                worker = _roomiest(candidates, item.request)
            if worker is None:
                refused.add(item.request)  # the ceiling only falls during a pass
                skipped.append(item)
                continue
            was = worker.free
            worker.allocated = worker.allocated + item.request
            self.allocations[item.task_id] = (worker.node_id, item.request, item.attempt)
            placements.append(Placement(item.task_id, item.attempt, worker.node_id, item.request))
            del self.pending[item.task_id]
            if (
                was.cpu_millis == ceiling.cpu_millis
                or was.memory_bytes == ceiling.memory_bytes
                or was.gpus == ceiling.gpus
            ):  # only a worker that held a maximum can lower the ceiling
                ceiling = _ceiling(candidates)
        for item in skipped:
            heapq.heappush(self._heap, item)
        return placements

    # ---- capacity ------------------------------------------------------------------------

    def allocate(self, task_id: str, node_id: str, request: Resources, attempt: int) -> None:
        """Book a running attempt on its worker (rebuilding from Redis, a reconnect)."""
        held = self.allocations.get(task_id)
        if held is not None and held[0] == node_id and held[2] == attempt:
            return
        self.release(task_id)
        self.dequeue(task_id)
        worker = self.workers.get(node_id)
        if worker is not None:
            worker.allocated = worker.allocated + request
        self.allocations[task_id] = (node_id, request, attempt)

    def release(self, task_id: str, attempt: int | None = None) -> None:
        """Give an attempt's capacity back (idempotent; only that attempt's, when given)."""
        held = self.allocations.get(task_id)
        if held is None or (attempt is not None and held[2] != attempt):
            return
        del self.allocations[task_id]
        worker = self.workers.get(held[0])
        if worker is not None:
            worker.allocated = worker.allocated - held[1]

    def node_holding(self, task_id: str) -> str:
        """The node an attempt of the task holds capacity on ("" when none does)."""
        held = self.allocations.get(task_id)
        return held[0] if held else ""

    def tasks_on(self, node_id: str) -> list[str]:
        return [t for t, (n, _r, _a) in self.allocations.items() if n == node_id]


def _ceiling(workers: list[Worker]) -> Resources:
    """Component-wise largest free capacity: a request above it fits nowhere."""
    return Resources.largest(w.free for w in workers)


def _roomiest(workers: list[Worker], request: Resources) -> Worker | None:
    """The worker with the most free CPU (then memory) that fits the request: spreads load."""
    best: Worker | None = None
    best_key = (-1, -1)
    for worker in workers:
        free = worker.free
        if request.fits_in(free):
            key = (free.cpu_millis, free.memory_bytes)
            if key > best_key:
                best, best_key = worker, key
    return best
