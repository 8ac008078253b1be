"""A worker's data in and out: the inputs an ``Assign`` names, fetched into the input cache
(agent/inputs.py) from the hub or their URL (agent/inputsources.py) and held while the task
runs, and its result zip sent to the hub (agent/results.py).

Both go over the worker's pool channel, the one its ``Connect`` stream uses: the worker
hands it over when a stream is up and takes it back when the stream ends, and a transfer
cut by a reconnect resumes on the next channel from where it got to.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from hivemind_cluster.agent import results
from hivemind_cluster.agent.inputs import CACHE_DIR, InputCache, InputUnavailable, Note, Wanted
from hivemind_cluster.agent.inputsources import HubSource, UrlSource
from hivemind_cluster.agent.results import RESULTS_DIR, Delivery
from hivemind_cluster.agent.taskrun import ResultFile, TaskInput
from hivemind_cluster.model.blobs import FILE, InputRef
from hivemind_cluster.model.states import TaskState
from hivemind_cluster.protos import pool_pb2 as pb

# How long a transfer waits for the worker to be connected before it counts as a failure.
CHANNEL_WAIT_SECONDS = 30.0
CANCEL_POLL_SECONDS = 0.25
DEFAULT_CACHE_BYTES = 20 * 1024**3

Fetched = tuple[Path | None, tuple[TaskInput, ...]]  # the bundle, the other inputs


class Transfers:
    def __init__(self, state: Path, cache_bytes: int, urls: UrlSource) -> None:
        self.state = state
        self.cache = InputCache(state / CACHE_DIR, cache_bytes)
        self.results_root = state / RESULTS_DIR
        self.urls = urls
        self.hub = HubSource(self.pool_channel)
        self._channel: grpc.aio.Channel | None = None
        self._changed: asyncio.Condition | None = None

    @classmethod
    def scratch(cls, node_id: str) -> Transfers:
        """For a worker made without any (tests): a temporary directory of its own, made
        when first needed, which ``remove`` takes away."""
        state = Path(tempfile.gettempdir()) / f"hivemind-agent-{node_id}-{secrets.token_hex(4)}"
        return cls(state, DEFAULT_CACHE_BYTES, UrlSource([]))

    def remove(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)

    # ---- the pool channel (on the worker's event loop) -----------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def connected(self, channel: grpc.aio.Channel | None) -> None:
        """The worker's stream is up on ``channel`` (None: it is down)."""
        changed = self._condition()
        async with changed:
            self._channel = channel
            changed.notify_all()

    async def pool_channel(self) -> grpc.aio.Channel:
        changed = self._condition()
        async with changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    changed.wait_for(lambda: self._channel is not None), CHANNEL_WAIT_SECONDS
                )
            if self._channel is None:
                raise ConnectionError("not connected to the pool")
            return self._channel

    # ---- inputs ----------------------------------------------------------------------------

    def wanted(self, assign: pb.Assign) -> list[Wanted]:
        refs = [InputRef.of(assign.bundle)] if assign.bundle.digest else []
        refs += [InputRef.of(message) for message in assign.inputs]
        return [self.source(ref, assign.task_id, assign.attempt) for ref in refs]

    def source(self, ref: InputRef, task_id: str, attempt: int) -> Wanted:
        if ref.url:
            return self.urls.wanted(ref, ref.size or self.cache.max_bytes)
        return self.hub.wanted(ref, task_id, attempt)

    @contextlib.asynccontextmanager
    async def inputs(
        self, assign: pb.Assign, note: Note, cancel: threading.Event
    ) -> AsyncIterator[Fetched]:
        """The assignment's bundle and inputs in the cache, held for the block; raises
        InputUnavailable (cancelled too), or SystemFailure when they cannot be fetched."""
        wanted = self.wanted(assign)
        if not wanted:
            yield None, ()
            return
        async with contextlib.AsyncExitStack() as stack:
            entering = asyncio.ensure_future(
                stack.enter_async_context(self.cache.held(wanted, note))
            )
            while not entering.done():
                await asyncio.wait({entering}, timeout=CANCEL_POLL_SECONDS)
                if cancel.is_set() and not entering.done():
                    entering.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await entering
                    raise InputUnavailable("cancelled", TaskState.CANCELLED)
            paths = entering.result()
            bundle = paths[assign.bundle.digest] if assign.bundle.digest else None
            inputs = tuple(
                TaskInput(message.name, message.kind or FILE, paths[message.digest])
                for message in assign.inputs
            )
            yield bundle, inputs

    # ---- results ---------------------------------------------------------------------------

    async def deliver(self, task_id: str, attempt: int, output: ResultFile) -> Delivery:
        return await results.deliver(self.pool_channel, task_id, attempt, output)
