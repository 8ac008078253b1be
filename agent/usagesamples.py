"""A running attempt's CPU and memory over time, as samples for the pool (its task's chart).

The executor reads the container's counters every poll (agent/usage.py) and hands each
reading to the attempt's ``UsageSeries``, which turns them into at most one sample every
SAMPLE_SECONDS: the CPU cores used over the interval (CPU seconds gained / seconds passed)
and the memory in use at its end. The worker's ``UsageBoard`` holds the series of its
attempts and puts the samples not sent yet into its next heartbeat.

Samples are kept, not only queued: after a reconnect the last KEPT_SAMPLES of each
attempt go again, since the heartbeat carrying them may have been lost with the stream.
The pool keeps a sample only when it is later than the last one it kept, so a sample sent
twice is stored once (pool/taskusage.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from hivemind_cluster.protos import pool_pb2 as pb

# At most one sample per attempt this often (the pool keeps 720: an hour at this pace,
# then the whole run at half the resolution, and so on).
SAMPLE_SECONDS = 5.0
# The samples of an attempt sent again after a reconnect (a minute's worth).
KEPT_SAMPLES = 12
# The run's last, shorter interval becomes a sample too when it lasted this long.
LAST_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class UsageSample:
    time: float  # Unix seconds
    cpu_cores: float  # cores used over the interval before ``time``
    memory_bytes: int  # in use at ``time``

    def message(self) -> pb.UsageSample:
        return pb.UsageSample(
            time=self.time, cpu_cores=self.cpu_cores, memory_bytes=self.memory_bytes
        )


@dataclass(frozen=True)
class Reading:
    """The container's counters at one moment."""

    monotonic: float
    wall: float
    cpu_seconds: float
    memory_bytes: int


def cores_used(before: Reading, after: Reading) -> float:
    """The CPU cores used between two readings (0 when no time passed, never negative:
    a counter read from another source may start lower)."""
    seconds = after.monotonic - before.monotonic
    if seconds <= 0:
        return 0.0
    return round(max(after.cpu_seconds - before.cpu_seconds, 0.0) / seconds, 4)


class UsageSeries:
    """One attempt's samples: readings added on the executor's thread, samples taken on
    the worker's event loop (hence the lock)."""

    def __init__(self, every: float | None = None, kept: int = KEPT_SAMPLES) -> None:
        # Read when made, not imported: tests shorten the interval.
        self.every = SAMPLE_SECONDS if every is None else every
        self._lock = threading.Lock()
        # The last samples, each with its number in the series (the clock may step back).
        self._kept: deque[tuple[int, UsageSample]] = deque(maxlen=kept)
        self._taken = 0  # samples numbered up to this were taken
        self._made = 0
        self._since: Reading | None = None  # where the interval being measured began
        self._last: Reading | None = None

    def reading(
        self,
        cpu_seconds: float,
        memory_bytes: int,
        monotonic: float | None = None,
        wall: float | None = None,
    ) -> None:
        """The counters now (CPU seconds used so far, memory in use): a sample once
        ``every`` seconds passed since the last one, or since the first reading."""
        now = Reading(
            time.monotonic() if monotonic is None else monotonic,
            time.time() if wall is None else wall,
            cpu_seconds,
            memory_bytes,
        )
        with self._lock:
            self._last = now
            if self._since is None:
                self._since = now
            elif now.monotonic - self._since.monotonic >= self.every:
                self._sample_to(now)

    def finish(self) -> None:
        """The run ended: its last interval since a sample becomes one, if long enough."""
        with self._lock:
            since, last = self._since, self._last
            if since and last and last.monotonic - since.monotonic >= LAST_INTERVAL_SECONDS:
                self._sample_to(last)

    def _sample_to(self, now: Reading) -> None:
        assert self._since is not None
        self._made += 1
        sample = UsageSample(now.wall, cores_used(self._since, now), now.memory_bytes)
        self._kept.append((self._made, sample))
        self._since = now

    def take_unsent(self) -> list[UsageSample]:
        """The samples not taken before, oldest first."""
        with self._lock:
            unsent = [sample for number, sample in self._kept if number > self._taken]
            self._taken = self._made
            return unsent

    def has_unsent(self) -> bool:
        with self._lock:
            return self._made > self._taken

    def rewind(self) -> None:
        """The kept samples count as not sent (a new stream: the last one may have lost them)."""
        with self._lock:
            self._taken = 0


class UsageBoard:
    """The worker's attempts' series, keyed by (task, attempt); used on its event loop."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, int], UsageSeries] = {}
        self._closed: set[tuple[str, int]] = set()

    def open(self, task_id: str, attempt: int) -> UsageSeries:
        key = (task_id, attempt)
        self._closed.discard(key)
        return self._series.setdefault(key, UsageSeries())

    def close(self, key: tuple[str, int]) -> None:
        """The pool needs nothing more of the attempt: its series goes once the samples it
        has not sent are taken (its last one may still wait for the next heartbeat)."""
        series = self._series.get(key)
        if series is not None and series.has_unsent():
            self._closed.add(key)
        else:
            self._series.pop(key, None)

    def take_unsent(self) -> list[pb.TaskUsage]:
        """Each attempt's samples not sent yet, for a heartbeat (none: an empty list)."""
        usage = []
        for (task_id, attempt), series in list(self._series.items()):
            samples = series.take_unsent()
            if samples:
                usage.append(
                    pb.TaskUsage(
                        task_id=task_id,
                        attempt=attempt,
                        samples=[s.message() for s in samples],
                    )
                )
            if (task_id, attempt) in self._closed:
                self._closed.discard((task_id, attempt))
                del self._series[task_id, attempt]
        return usage

    def rewind(self) -> None:
        for series in self._series.values():
            series.rewind()

    def __len__(self) -> int:
        return len(self._series)
