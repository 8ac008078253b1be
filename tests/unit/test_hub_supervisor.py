"""The hub's supervisor (hub/supervisor.py): a child that dies is restarted after a growing
pause; one that keeps dying stops the hub with an error naming it and its log."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.hub.supervisor import RestartPolicy, run_until_stopped, supervise


class Flaky:
    """A child that dies again after each of its first ``deaths`` restarts (or fails to restart)."""

    name = "the flaky child"
    log_hint = "/var/log/flaky.log"

    def __init__(self, deaths: int, failing_restarts: int = 0) -> None:
        self.deaths = deaths
        self.failing_restarts = failing_restarts
        self.restarts = 0
        self.code: int | None = -9

    def exit_code(self) -> int | None:
        return self.code

    async def restart(self) -> None:
        self.restarts += 1
        if self.failing_restarts:
            self.failing_restarts -= 1
            raise SystemFailure("it did not answer")
        self.deaths -= 1
        self.code = -9 if self.deaths > 0 else None


def test_the_pause_doubles_up_to_the_longest() -> None:
    policy = RestartPolicy(first_delay=1, longest_delay=5, limit=10, window=100)
    assert [policy.next_delay(Flaky(0), now) for now in range(5)] == [1, 2, 4, 5, 5]


def test_deaths_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(first_delay=1, longest_delay=30, limit=2, window=10)
    child = Flaky(0)
    policy.next_delay(child, 0)
    policy.next_delay(child, 1)
    assert policy.next_delay(child, 20) == 1  # the two early ones no longer count


def test_more_deaths_than_the_limit_within_the_window_gives_up() -> None:
    policy = RestartPolicy(first_delay=1, longest_delay=30, limit=2, window=60)
    child = Flaky(0)
    policy.next_delay(child, 0)
    policy.next_delay(child, 1)
    with pytest.raises(SystemFailure) as refused:
        policy.next_delay(child, 2)
    assert refused.value.message == (
        "the flaky child died 3 times within 60 s; stopping the hub (see /var/log/flaky.log)"
    )


def test_a_dead_child_is_restarted_and_the_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    child = Flaky(deaths=2)
    policy = RestartPolicy(first_delay=0.01, longest_delay=0.01, limit=5, window=60)

    async def run() -> None:
        watcher = asyncio.create_task(supervise(child, policy, poll=0.01))
        while child.code is not None:
            await asyncio.sleep(0.01)
        watcher.cancel()

    with caplog.at_level(logging.INFO, "hivemind.hub"):
        asyncio.run(run())
    assert child.restarts == 2
    assert caplog.messages.count("the flaky child exited (code -9); restarting it in 0 s") == 2
    assert caplog.messages.count("the flaky child restarted") == 2


def test_a_restart_that_fails_counts_as_a_death_until_the_hub_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    child = Flaky(deaths=1, failing_restarts=100)
    policy = RestartPolicy(first_delay=0.01, longest_delay=0.01, limit=3, window=60)
    with pytest.raises(SystemFailure, match="died 4 times"), caplog.at_level(logging.INFO):
        asyncio.run(supervise(child, policy, poll=0.01))
    assert child.restarts == 3
    assert "the flaky child did not come back: it did not answer" in caplog.messages


def quick() -> RestartPolicy:
    return RestartPolicy(first_delay=0.01, longest_delay=0.01, limit=2, window=60)


def test_the_hub_stops_with_the_error_of_a_child_that_keeps_dying() -> None:
    dying, healthy = Flaky(deaths=100), Flaky(deaths=1)

    async def run() -> None:
        async with contextlib.AsyncExitStack() as undo:
            await run_until_stopped(asyncio.Event(), [healthy, dying], undo, quick)

    with pytest.raises(SystemFailure, match="the flaky child died 3 times within 60 s"):
        asyncio.run(run())
    assert dying.restarts == 2 and healthy.code is None


def test_a_signal_stops_the_supervision_first(caplog: pytest.LogCaptureFixture) -> None:
    child = Flaky(deaths=0)
    child.code = None

    async def run() -> None:
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as undo:
            asyncio.get_running_loop().call_later(0.05, stop.set)
            await run_until_stopped(stop, [child], undo, quick)
        child.code = -15  # as stopping it does: nobody watches it any more
        await asyncio.sleep(0.6)  # longer than the supervisor's poll

    with caplog.at_level(logging.INFO, "hivemind.hub"):
        asyncio.run(run())
    assert child.restarts == 0 and caplog.messages[-1] == "hub stopping"
