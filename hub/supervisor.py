"""Keeping the hub's children (Redis, the web) alive: ``supervise`` restarts a child that
died, after a growing pause, and gives up, stopping the hub with a clear error, when it
keeps dying.

The hub process itself may be alive while a child is dead, so a service manager's
``Restart=`` never sees the failure: the hub has to notice and act on it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from hivemind_cluster.core.errors import SystemFailure

log = logging.getLogger("hivemind.hub")


class Child(Protocol):
    name: str  # as the log says it: "redis-server", "the web UI"
    log_hint: str  # where to look when it keeps dying

    def exit_code(self) -> int | None:
        """None while it runs."""
        ...

    async def restart(self) -> None:
        """Start it again; raises (it is then not running) if it does not come up."""
        ...


@dataclass
class RestartPolicy:
    """Pauses of ``first_delay`` doubling to ``longest_delay`` before each restart; more
    than ``limit`` deaths within ``window`` seconds and the hub gives up."""

    first_delay: float = 1.0
    longest_delay: float = 30.0
    limit: int = 5
    window: float = 600.0
    deaths: list[float] = field(default_factory=list)

    def next_delay(self, child: Child, now: float) -> float:
        """How long to wait before restarting ``child`` that just died, or SystemFailure."""
        self.deaths = [t for t in self.deaths if now - t < self.window] + [now]
        if len(self.deaths) > self.limit:
            raise SystemFailure(
                f"{child.name} died {len(self.deaths)} times within {self.window:.0f} s; "
                f"stopping the hub (see {child.log_hint})"
            )
        return float(min(self.first_delay * 2 ** (len(self.deaths) - 1), self.longest_delay))


async def supervise(child: Child, policy: RestartPolicy, poll: float = 0.5) -> None:
    """Restart ``child`` whenever it exits; returns only by raising SystemFailure (given
    up) or being cancelled (the hub stops)."""
    while True:
        while (code := child.exit_code()) is None:
            await asyncio.sleep(poll)
        try:
            delay = policy.next_delay(child, time.monotonic())
        except SystemFailure:
            log.error("%s exited (code %s) once too often", child.name, code)
            raise
        log.warning("%s exited (code %s); restarting it in %.0f s", child.name, code, delay)
        await asyncio.sleep(delay)
        try:
            await child.restart()
        except Exception as exc:  # it is down: counted as one more death on the next turn
            reason = exc.message if isinstance(exc, SystemFailure) else repr(exc)
            log.error("%s did not come back: %s", child.name, reason)
            continue
        log.info("%s restarted", child.name)


async def run_until_stopped(
    stop: asyncio.Event,
    children: list[Child],
    undo: contextlib.AsyncExitStack,
    policy: Callable[[], RestartPolicy] = RestartPolicy,
) -> None:
    """Until ``stop`` (SIGTERM/SIGINT), restarting ``children`` that die; SystemFailure
    when one keeps dying (``undo`` then stops the hub). Supervision ends first on ``undo``:
    nothing is restarted while the hub stops."""
    watchers = [asyncio.create_task(supervise(child, policy())) for child in children]
    undo.push_async_callback(cancel_and_wait, watchers)
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopped, *watchers], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    for task in done:
        if task is not stopped:
            task.result()  # raises what the supervisor gave up with
    log.info("hub stopping")


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def repeat_until_undone(
    undo: contextlib.AsyncExitStack,
    name: str,
    interval: float,
    step: Callable[[], Awaitable[object]],
    failed: str,
) -> None:
    """Run ``step`` now and every ``interval`` seconds until the hub stops (the task is
    cancelled on ``undo``); a failure is logged (``failed``) and the next turn comes."""

    async def forever() -> None:
        while True:
            try:
                await step()
            except Exception:
                log.exception("%s; tried again later", failed)
            await asyncio.sleep(interval)

    task = asyncio.create_task(forever(), name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    undo.push_async_callback(stop)
