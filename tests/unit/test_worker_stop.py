"""A worker stops when its task is cancelled, even when grpc turns the cancellation into an
RPC error on the way out (it must not take that for a dropped stream and reconnect); a
draining worker waits for the result zips on their way as for running tasks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.results import SENT, Delivery
from hivemind_cluster.agent.taskrun import ResultFile
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


def test_a_draining_worker_lets_a_result_zip_on_its_way_arrive(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its task has ended (not running any more), its zip is being sent: the drain waits for
    it, rather than deleting the zip mid-upload a moment later."""

    async def connected_session(worker: Worker) -> None:
        worker._set_connected(True)
        await asyncio.Event().wait()

    monkeypatch.setattr(Worker, "_session", connected_session)
    zipped = tmp_path / "t-1.zip"
    zipped.write_bytes(b"a large result")

    async def body() -> None:
        worker = Worker(IDENTITY, ScriptedExecutor(), Facts(Resources(1000, GiB, 0)), 60)
        started, release = asyncio.Event(), asyncio.Event()
        seen: list[bool] = []

        async def send(task_id: str, attempt: int, output: ResultFile) -> Delivery:
            started.set()
            await release.wait()
            seen.append(output.path.exists())
            return SENT

        worker._zips.send = send
        running = asyncio.create_task(worker.run())
        while not worker.connected:
            await asyncio.sleep(0.01)
        upload = asyncio.create_task(worker._zips.deliver(("t1", 1), ResultFile(zipped, "", 1)))
        await started.wait()
        worker.drain()
        await asyncio.sleep(0.5)  # time enough for a drain that did not wait to drop the zip
        release.set()
        assert await upload == SENT and seen == [True]
        await asyncio.wait_for(running, 10)

    asyncio.run(body())
