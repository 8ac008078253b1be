"""Bounded time series in Redis: recent samples at full resolution, older ones averaged.

A series is named by a short key (``node:n1a2b:cpu``) and knows nothing of what it
measures. ``record`` appends one sample per series; ``read`` returns ``(time, value)``
points, the fine ones where they still exist and the coarse averages beyond them.

Why one fixed-size string per series (``core/history.lua``): a sorted set costs some 60
bytes a point, so 24 hours at 10 s would be half a megabyte a series; here a point is 4
bytes (or 2, see ``Shape.width``) at a position its time decides, the string is made
whole at the first sample and never grows, and a write is a few ``SETRANGE``s in one Lua
call. Memory is fixed whatever the run time: ``Shape.memory_bytes`` a series. A series
that is no longer written expires after its retention; ``forget`` removes series at once.

Reads need no Lua, so any client reads (the web's decodes replies; binary ranges are
fetched undecoded): the headers first, then the rings' ranges with each header again
after them, and points the writer may have overwritten meanwhile are dropped.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.redisdb import Library

# ---- Redis keys (all of this module's) ---------------------------------------------------
SERIES = "hm:history:{series}"  # string: header | fine ring | coarse ring (history.lua)

LIBRARY = Library("hivemind_cluster.core", "history.lua", {})
HEADER_BYTES = 64
HEADER = struct.Struct("<dIIIIdddId")  # step, points, per_coarse, coarse_points, width, ...
RECORD_CHUNK = 200  # series per Lua call: one never holds Redis long (~20 ms making them)
SERIES_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,120}$")

Point = tuple[float, float]


@dataclass(frozen=True)
class Shape:
    """How a series keeps its samples: ``points`` at ``step`` seconds, and beyond them
    ``coarse_points`` averages of ``per_coarse`` steps each. The default is 24 hours at
    10 s and 7 days of 5-minute averages. ``width`` 4 keeps float32 values; 2 keeps
    bfloat16 (about 3 significant digits, the range of float32) at half the memory."""

    step: float = 10.0
    points: int = 8640
    per_coarse: int = 30
    coarse_points: int = 2016
    width: int = 4

    def __post_init__(self) -> None:
        if not (self.step > 0 and self.points > 0 and self.per_coarse > 0):
            raise InvalidInput("a history shape needs a positive step, points and per_coarse")
        if self.coarse_points <= 0 or self.width not in (2, 4):
            raise InvalidInput("a history shape needs coarse points and a width of 2 or 4")

    @property
    def coarse_step(self) -> float:
        return self.step * self.per_coarse

    @property
    def retention(self) -> float:
        """Seconds a series keeps anything: also how long it lives unwritten."""
        return max(self.step * self.points, self.coarse_step * self.coarse_points)

    @property
    def memory_bytes(self) -> int:
        """The size of one series' string (Redis adds its own per-key overhead)."""
        return HEADER_BYTES + (self.points + self.coarse_points) * self.width


DEFAULT_SHAPE = Shape()


def series_key(series: str) -> str:
    if not SERIES_NAME.match(series):
        raise InvalidInput(f"history series {series[:40]!r} is not a short key like a:b-1")
    return SERIES.format(series=series)


# ---- writing -----------------------------------------------------------------------------


def queue_record(pipe: Any, samples: Mapping[str, float], at: float, shape: Shape) -> None:
    """Queue the Lua calls that append ``samples`` (series -> value) at time ``at`` on a
    pipeline of either client; a value that is not a finite number is no sample."""
    finite = [(series_key(name), float(v)) for name, v in samples.items() if math.isfinite(v)]
    head = [
        repr(float(at)),
        repr(float(shape.step)),
        shape.points,
        shape.per_coarse,
        shape.coarse_points,
        shape.width,
        math.ceil(shape.retention * 1000),
    ]
    for start in range(0, len(finite), RECORD_CHUNK):
        chunk = finite[start : start + RECORD_CHUNK]
        keys, values = [k for k, _ in chunk], [repr(v) for _, v in chunk]
        pipe.fcall("hm_history_record", len(keys), *keys, *head, *values)


Groups = Iterable[tuple[Mapping[str, float], Shape]]


def record(
    db: redis.Redis, samples: Mapping[str, float], at: float, shape: Shape = DEFAULT_SHAPE
) -> None:
    """Append one sample per series at ``at``, in one pipeline."""
    record_groups(db, [(samples, shape)], at)


def record_groups(db: redis.Redis, groups: Groups, at: float) -> None:
    """``record`` for series of several shapes, still in one pipeline."""
    groups = list(groups)
    for attempt in (1, 2):
        pipe = db.pipeline(transaction=False)
        for samples, shape in groups:
            queue_record(pipe, samples, at, shape)
        try:
            pipe.execute()
            return
        except redis.ResponseError as exc:
            if attempt == 2 or not _library_missing(exc):
                raise
            db.function_load(LIBRARY.code, replace=True)


async def arecord(
    db: aioredis.Redis, samples: Mapping[str, float], at: float, shape: Shape = DEFAULT_SHAPE
) -> None:
    """``record`` over an asyncio client."""
    await arecord_groups(db, [(samples, shape)], at)


async def arecord_groups(db: aioredis.Redis, groups: Groups, at: float) -> None:
    """``record_groups`` over an asyncio client (the pool's)."""
    groups = list(groups)
    for attempt in (1, 2):
        pipe = db.pipeline(transaction=False)
        for samples, shape in groups:
            queue_record(pipe, samples, at, shape)
        try:
            await pipe.execute()
            return
        except redis.ResponseError as exc:
            if attempt == 2 or not _library_missing(exc):
                raise
            await db.function_load(LIBRARY.code, replace=True)


def _library_missing(exc: redis.ResponseError) -> bool:
    """Redis lost its functions (a restart without its AOF, a FUNCTION FLUSH): load again."""
    return "function not found" in str(exc).lower()


# ---- forgetting --------------------------------------------------------------------------

FORGET_BATCH = 500


def _pattern(prefix: str) -> str:
    series_key(prefix)  # checks it: no glob characters can be in it
    return SERIES.format(series=prefix) + "*"


def forget(db: redis.Redis, prefix: str) -> int:
    """Remove every series whose name starts with ``prefix`` (a node that left); how many."""
    removed, batch = 0, []
    for key in db.scan_iter(match=_pattern(prefix), count=1000):
        batch.append(key)
        if len(batch) >= FORGET_BATCH:
            removed += int(db.unlink(*batch))
            batch = []
    return removed + (int(db.unlink(*batch)) if batch else 0)


async def aforget(db: aioredis.Redis, prefix: str) -> int:
    """``forget`` over an asyncio client."""
    removed, batch = 0, []
    async for key in db.scan_iter(match=_pattern(prefix), count=1000):
        batch.append(key)
        if len(batch) >= FORGET_BATCH:
            removed += int(await db.unlink(*batch))
            batch = []
    return removed + (int(await db.unlink(*batch)) if batch else 0)


# ---- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    shape: Shape
    last: float  # the last fine slot written (-1: none)
    coarse: float  # the last coarse bucket written (-1: none)

    @classmethod
    def parse(cls, raw: Any) -> _Header | None:
        if not isinstance(raw, bytes) or len(raw) < HEADER.size:
            return None
        step, points, per, cpoints, width, last, _bucket, _sum, _count, coarse = HEADER.unpack(
            raw[: HEADER.size]
        )
        try:
            shape = Shape(step, points, per, cpoints, width)
        except InvalidInput:
            return None
        return cls(shape, last, coarse)

    @property
    def fine_first(self) -> float:
        """The oldest fine slot still kept."""
        return self.last - self.shape.points + 1

    def fine_slots(self, since: float, until: float) -> range:
        step = self.shape.step
        low = max(self.fine_first, math.ceil(since / step))
        return range(int(low), int(min(self.last, math.floor(until / step))) + 1)

    def coarse_slots(self, since: float, until: float) -> range:
        """Buckets wholly before the fine points whose middle is in [since, until]."""
        shape = self.shape
        middle_low = math.ceil(since / shape.coarse_step - 0.5)
        middle_high = math.floor(until / shape.coarse_step - 0.5)
        before_fine = math.floor(self.fine_first / shape.per_coarse) - 1
        low = max(self.coarse - shape.coarse_points + 1, middle_low)
        high = min(self.coarse, middle_high, before_fine)
        return range(int(low), int(high) + 1)


def _ring_ranges(slots: range, size: int, base: int, width: int) -> list[tuple[int, int]]:
    """The byte ranges (inclusive, as GETRANGE takes them) holding ``slots``: at most two."""
    if not slots:
        return []
    first = slots.start % size
    head = min(len(slots), size - first)
    ranges = [(base + first * width, base + (first + head) * width - 1)]
    if len(slots) > head:
        ranges.append((base, base + (len(slots) - head) * width - 1))
    return ranges


def _decode(data: bytes, width: int) -> Sequence[float]:
    if width == 2:  # bfloat16: the high half of a float32
        widened = bytearray(len(data) * 2)
        widened[2::4], widened[3::4] = data[0::2], data[1::2]
        data = bytes(widened)
    return struct.unpack(f"<{len(data) // 4}f", data)


def _getrange(pipe: Any, key: str, start: int, end: int) -> None:
    pipe.execute_command("GETRANGE", key, start, end, **{NEVER_DECODE: True})


def read(db: redis.Redis, series: str, since: float, until: float) -> list[Point]:
    """The series' points in [since, until], oldest first (none for an unknown series)."""
    return read_many(db, [series], since, until)[series]


def read_many(
    db: redis.Redis, names: Sequence[str], since: float, until: float
) -> dict[str, list[Point]]:
    """``read`` of several series in two round trips, whatever their number."""
    keys = [series_key(name) for name in names]
    pipe = db.pipeline(transaction=False)
    for key in keys:
        _getrange(pipe, key, 0, HEADER_BYTES - 1)
    headers = [_Header.parse(raw) for raw in pipe.execute()]
    pipe = db.pipeline(transaction=False)
    plans: list[tuple[range, range, int]] = []
    for key, header in zip(keys, headers, strict=True):
        if header is None:
            plans.append((range(0), range(0), 0))
            continue
        shape = header.shape
        fine, coarse = header.fine_slots(since, until), header.coarse_slots(since, until)
        ranges = _ring_ranges(fine, shape.points, HEADER_BYTES, shape.width)
        coarse_base = HEADER_BYTES + shape.points * shape.width
        ranges += _ring_ranges(coarse, shape.coarse_points, coarse_base, shape.width)
        for start, end in ranges:
            _getrange(pipe, key, start, end)
        _getrange(pipe, key, 0, HEADER_BYTES - 1)  # after the data: where writing got to
        plans.append((fine, coarse, len(ranges)))
    replies = iter(pipe.execute())
    found: dict[str, list[Point]] = {}
    for name, header, (fine, coarse, count) in zip(names, headers, plans, strict=True):
        if header is None:
            found[name] = []
            continue
        data = b"".join(next(replies) for _ in range(count))
        after = _Header.parse(next(replies))
        found[name] = _points(header, after, fine, coarse, data)
    return found


def _points(
    header: _Header, after: _Header | None, fine: range, coarse: range, data: bytes
) -> list[Point]:
    """The points read, less those the writer may have replaced since the header was read."""
    shape = header.shape
    if after is None or after.shape != shape:
        return []  # removed, or made again with another shape, meanwhile
    values = _decode(data, shape.width)
    points: list[Point] = []
    coarse_values = values[len(fine) :]
    for slot, value in zip(coarse, coarse_values, strict=True):
        kept = slot > after.coarse - shape.coarse_points
        if kept and not math.isnan(value):
            points.append(((slot + 0.5) * shape.coarse_step, value))
    for slot, value in zip(fine, values[: len(fine)], strict=True):
        if slot >= after.fine_first and not math.isnan(value):
            points.append((slot * shape.step, value))
    return points
