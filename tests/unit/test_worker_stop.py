"""A worker stops when its task is cancelled, even when grpc turns the cancellation into an
RPC error on the way out (it must not take that for a dropped stream and reconnect)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.model.resources import Resources
from tests.support.poolkit import GiB, ScriptedExecutor

IDENTITY = Identity("w1", b"", b"", b"", "127.0.0.1:1")


def test_a_cancelled_worker_stops_instead_of_reconnecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions = []

    async def stubborn_session(worker: Worker) -> None:
        """Connected until cancelled, then ends with the RPC error grpc may raise instead."""
        sessions.append(1)
        if len(sessions) > 1:  # it reconnected: the bug; end here so the test fails, not hangs
            raise asyncio.CancelledError
        worker._set_connected(True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            empty = grpc.aio.Metadata()
            raise grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, empty, empty) from None

    monkeypatch.setattr(Worker, "_session", stubborn_session)

    async def body() -> None:
        worker = Worker(IDENTITY, ScriptedExecutor(), Facts(Resources(1000, GiB, 0)))
        running = asyncio.create_task(worker.run())
        while not worker.connected:
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
        assert len(sessions) == 1 and not worker.connected

    asyncio.run(body())
