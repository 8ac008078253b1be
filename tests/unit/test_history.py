"""core/history.py on a real redis-server: resolution, downsampling, gaps, laps of the
rings, bounded memory, expiry, forgetting, shapes, and reads through a decoding client."""

from __future__ import annotations

import asyncio
import math

import pytest
import redis

from hivemind_cluster.core import history
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.hub.redis_server import RedisServer
from tests.support.poolkit import redis_client

pytestmark = pytest.mark.privileged
# Small rings so that laps are quick: 10 fine points of 1 s, 4 coarse averages of 5 s.
SMALL = history.Shape(step=1.0, points=10, per_coarse=5, coarse_points=4)
T0 = 1_700_000_000.0  # a multiple of every step here


def write(client: redis.Redis, name: str, values: dict[float, float], shape: history.Shape) -> None:
    """One ``record`` per (offset from T0 -> value), in time order."""
    for offset, value in sorted(values.items()):
        history.record(client, {name: value}, T0 + offset, shape)


def offsets(points: list[history.Point]) -> list[float]:
    return [t - T0 for t, _ in points]


def test_samples_come_back_at_their_slot_times(client: redis.Redis) -> None:
    write(client, "a", {float(n * 10) + 3: float(n) for n in range(12)}, history.DEFAULT_SHAPE)
    points = history.read(client, "a", T0, T0 + 3600)
    assert offsets(points) == [n * 10.0 for n in range(12)]  # slot starts: 10 s resolution
    assert [v for _, v in points] == [float(n) for n in range(12)]
    assert offsets(history.read(client, "a", T0 + 25, T0 + 61)) == [30.0, 40.0, 50.0, 60.0]
    assert history.read(client, "unknown", T0, T0 + 3600) == []


def test_beyond_the_fine_points_come_the_coarse_averages(client: redis.Redis) -> None:
    write(client, "s", {float(t): float(t) for t in range(30)}, SMALL)
    points = history.read(client, "s", T0 - 100, T0 + 100)
    # Fine: the last 10 slots (20..29). Coarse: buckets wholly before them that the ring
    # still holds (1, 2, 3; bucket 0 went round), each the mean of its 5 samples, at its
    # middle. Bucket 4 (20..24) is in the fine points, bucket 5 still being summed.
    assert points[:3] == [(T0 + 7.5, 7.0), (T0 + 12.5, 12.0), (T0 + 17.5, 17.0)]
    assert points[3:] == [(T0 + t, float(t)) for t in range(20, 30)]
    assert offsets(history.read(client, "s", T0 + 10, T0 + 15)) == [12.5]


def test_a_pause_leaves_a_gap_and_old_laps_never_show(client: redis.Redis) -> None:
    write(client, "g", {float(t): 1.0 for t in range(10)}, SMALL)
    write(client, "g", {15.0: 2.0}, SMALL)  # slots 10..14 were never written
    # Fine slots 6..9 and 15 (0..5 went round); before them bucket 0's average (0..4).
    assert offsets(history.read(client, "g", T0, T0 + 20)) == [2.5, 6.0, 7.0, 8.0, 9.0, 15.0]
    write(client, "g", {500.0: 3.0}, SMALL)  # a pause longer than the whole ring
    fine = [p for p in history.read(client, "g", T0 + 400, T0 + 600)]
    assert fine == [(T0 + 500, 3.0)]


def test_an_older_sample_is_ignored_and_the_same_slot_replaced(client: redis.Redis) -> None:
    write(client, "o", {5.0: 1.0}, SMALL)
    history.record(client, {"o": 9.0}, T0 + 4, SMALL)
    history.record(client, {"o": 2.0}, T0 + 5.5, SMALL)
    assert history.read(client, "o", T0, T0 + 10) == [(T0 + 5, 2.0)]


def test_memory_is_fixed_and_unwritten_series_expire(client: redis.Redis) -> None:
    write(client, "m", {float(t): float(t % 7) for t in range(3)}, history.DEFAULT_SHAPE)
    key = history.series_key("m")
    size = history.DEFAULT_SHAPE.memory_bytes
    assert size == 64 + (8640 + 2016) * 4
    assert client.strlen(key) == size
    write(
        client,
        "m",
        {float(t): 1.0 for t in range(100_000, 100_000 + 86400 * 3, 3600)},
        history.DEFAULT_SHAPE,
    )
    assert client.strlen(key) == size  # three days later: the same string
    used = client.memory_usage(key)
    assert used is not None and used < size * 1.3, used
    ttl = client.ttl(key)
    assert 0.99 * history.DEFAULT_SHAPE.retention <= ttl <= history.DEFAULT_SHAPE.retention
    assert history.DEFAULT_SHAPE.retention == 7 * 86400


def test_half_width_points_keep_three_digits_in_half_the_memory(client: redis.Redis) -> None:
    half = history.Shape(width=2)
    values = {0.0: 12_345_678_901.0, 10.0: 37.5, 20.0: 0.1234, 30.0: -5.0, 40.0: 0.0}
    write(client, "h", values, half)
    assert client.strlen(history.series_key("h")) == half.memory_bytes == 64 + 10656 * 2
    got = history.read(client, "h", T0, T0 + 60)
    assert offsets(got) == sorted(values)
    for (_, value), expected in zip(got, [values[k] for k in sorted(values)], strict=True):
        assert math.isclose(value, expected, rel_tol=1 / 256), (value, expected)


def test_a_new_shape_starts_the_series_again(client: redis.Redis) -> None:
    write(client, "r", {0.0: 1.0, 1.0: 2.0}, SMALL)
    other = history.Shape(step=2.0, points=10, per_coarse=5, coarse_points=4)
    history.record(client, {"r": 5.0}, T0 + 4, other)
    assert history.read(client, "r", T0, T0 + 10) == [(T0 + 4, 5.0)]
    assert client.strlen(history.series_key("r")) == other.memory_bytes


def test_one_record_writes_many_series_and_skips_what_is_not_a_number(
    client: redis.Redis,
) -> None:
    samples = {f"node:n{i}:cpu": float(i) for i in range(1200)}  # three Lua calls' worth
    samples["bad"] = math.nan
    samples["worse"] = math.inf
    history.record(client, samples, T0, SMALL)
    found = history.read_many(client, ["node:n0:cpu", "node:n1199:cpu", "bad", "worse"], T0, T0)
    assert found == {
        "node:n0:cpu": [(T0, 0.0)],
        "node:n1199:cpu": [(T0, 1199.0)],
        "bad": [],
        "worse": [],
    }


def test_forget_removes_one_prefix_only(client: redis.Redis) -> None:
    history.record(client, {"node:n1:cpu": 1.0, "node:n1:memory": 2.0, "node:n12:cpu": 3.0}, T0)
    assert history.forget(client, "node:n1:") == 2
    assert history.read(client, "node:n12:cpu", T0, T0) == [(T0, 3.0)]
    assert history.read(client, "node:n1:cpu", T0, T0) == []


def test_bad_names_and_shapes_are_refused(client: redis.Redis) -> None:
    for name in ("", "a b", "node:*", "x" * 121, "a\nb"):
        with pytest.raises(InvalidInput, match="short key"):
            history.record(client, {name: 1.0}, T0)
    with pytest.raises(InvalidInput, match="short key"):
        history.forget(client, "node:[a-z]")
    with pytest.raises(InvalidInput):
        history.Shape(width=3)
    with pytest.raises(InvalidInput):
        history.Shape(step=0)


def test_a_lost_library_is_loaded_again(client: redis.Redis) -> None:
    history.record(client, {"l": 1.0}, T0, SMALL)
    client.function_delete("hivemind_history")
    history.record(client, {"l": 2.0}, T0 + 1, SMALL)
    assert [v for _, v in history.read(client, "l", T0, T0 + 1)] == [1.0, 2.0]


def test_the_asyncio_client_records_and_forgets(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    async def main() -> None:
        db = redis_client(redis_server)
        try:
            groups = [({"a:1": 1.0}, SMALL), ({"a:2": 2.0}, history.DEFAULT_SHAPE)]
            await history.arecord_groups(db, groups, T0)
            await history.arecord(db, {"a:1": 3.0}, T0 + 1, SMALL)
            assert history.read(client, "a:1", T0, T0 + 1) == [(T0, 1.0), (T0 + 1, 3.0)]
            assert history.read(client, "a:2", T0, T0 + 1) == [(T0, 2.0)]
            assert await history.aforget(db, "a:") == 2
        finally:
            await db.aclose()

    asyncio.run(main())
