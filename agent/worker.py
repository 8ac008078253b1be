"""The agent's side of the pool: one stream up to the hub, tasks run as they arrive.

``Worker.run()`` keeps a ``Connect`` stream open (reconnecting with backoff): it
registers the machine's capacity and the attempts still running, sends a heartbeat every
second, runs each ``Assign`` in the executor on a thread, streams its output, and reports
its result until the pool acknowledges it. A reconnect resumes: running attempts continue
and unacknowledged results are sent again (the pool's fencing makes that safe).

Shutdown, as in rq: ``drain()`` (first SIGTERM) takes no new work — the heartbeat says
``draining`` — and lets running tasks finish for ``drain_seconds``; then, or at once on
``halt()`` (second signal), it stops them and reports them ``interrupted`` so the pool
requeues them.

``snapshot()`` is the one way other threads (the agent's status page) read its state: a
copy of the running attempts, the recently finished ones and the stream's state, taken
under a lock, since the event loop changes them meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import psutil

from hivemind_cluster import __version__
from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun, task_result, task_run
from hivemind_cluster.client.channel import Identity, aio_channel
from hivemind_cluster.model.states import INTERRUPTED
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

log = logging.getLogger("hivemind.agent.worker")
LOG_PIECE = 64 * 1024
MAX_BACKLOG = 10_000  # messages kept while disconnected; older log chunks are dropped
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
RECENT_ATTEMPTS = 20  # finished attempts kept for the status page
Stream = grpc.aio.StreamStreamCall[pb.AgentMessage, pb.PoolMessage]


class Executor(Protocol):
    def run(self, task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome: ...


@dataclass
class RunningAttempt:
    task_id: str
    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)
    interrupted: bool = False
    image: str = ""
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class AttemptView:
    """A running attempt, as read from another thread (times are unix seconds)."""

    task_id: str
    attempt: int
    image: str
    started_at: float


@dataclass(frozen=True)
class FinishedAttempt:
    task_id: str
    attempt: int
    status: str
    exit_code: int
    ended_at: float


@dataclass(frozen=True)
class WorkerSnapshot:
    """The worker at one instant. ``since`` is when ``connected`` last changed (None: never
    connected yet); ``last_received`` is the pool's last message (it sends none while idle:
    heartbeats go up only), ``last_sent`` the last one written to the stream."""

    connected: bool
    since: float | None
    last_received: float | None
    last_sent: float | None
    draining: bool
    completed: int
    running: tuple[AttemptView, ...]
    recent: tuple[FinishedAttempt, ...]  # newest first


class Worker:
    def __init__(
        self, identity: Identity, executor: Executor, facts: Facts, drain_seconds: float = 30
    ) -> None:
        self.identity = identity
        self.executor = executor
        self.facts = facts
        self.drain_seconds = drain_seconds
        # Keyed by (task, attempt): a task's next attempt may arrive while the old one stops.
        self.running: dict[tuple[str, int], RunningAttempt] = {}
        # Cancels that overtook their Assign (bounded): applied when the Assign arrives.
        self._early_cancels: collections.deque[tuple[str, int]] = collections.deque(maxlen=1000)
        self.unacknowledged: dict[tuple[str, int], pb.TaskResult] = {}
        self.connected = False
        self.completed = 0
        # For snapshot(): what the event loop changes and other threads read.
        self.recent: collections.deque[FinishedAttempt] = collections.deque(maxlen=RECENT_ATTEMPTS)
        self._view_lock = threading.Lock()
        self._link_since: float | None = None
        self._last_received: float | None = None
        self._last_sent: float | None = None
        self._threads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="task")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[pb.AgentMessage] | None = None
        self._draining: asyncio.Event | None = None
        self._halting: asyncio.Event | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        # GPUs not handed to a running task: each task gets its own devices.
        self._free_gpus: list[str] = [g.uuid or str(g.index) for g in facts.gpus]

    # ---- control from other threads (signal handlers) ------------------------------------

    def drain(self) -> None:
        self._from_any_thread(self._drain)

    def halt(self) -> None:
        self._from_any_thread(self._halt)

    def _drain(self) -> None:
        assert self._draining is not None
        if not self._draining.is_set():
            self._draining.set()
            # Tell the pool now, before any task is handed back, so it is not re-sent here.
            self._send(pb.AgentMessage(heartbeat=self._heartbeat()))

    def _halt(self) -> None:
        assert self._halting is not None
        self._halting.set()
        self._drain()

    def _from_any_thread(self, action: Callable[[], object]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between: it has stopped anyway
                loop.call_soon_threadsafe(action)

    def snapshot(self) -> WorkerSnapshot:
        """A consistent copy of what the worker is doing; callable from any thread."""
        with self._view_lock:
            running = sorted(self.running.values(), key=lambda r: r.started_at)
            views = tuple(AttemptView(r.task_id, r.attempt, r.image, r.started_at) for r in running)
            recent, completed = tuple(self.recent), self.completed
            connected, since = self.connected, self._link_since
        draining = self._draining is not None and self._draining.is_set()
        return WorkerSnapshot(
            connected=connected,
            since=since,
            last_received=self._last_received,
            last_sent=self._last_sent,
            draining=draining,
            completed=completed,
            running=views,
            recent=recent,
        )

    def _set_connected(self, connected: bool) -> None:
        with self._view_lock:
            if connected != self.connected:
                self._link_since = time.time()
            self.connected = connected

    # ---- main loop -----------------------------------------------------------------------

    def run_forever(self) -> None:
        """Run in a thread of its own (the agent service's main thread owns the interface)."""
        asyncio.run(self.run())

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._draining = asyncio.Event()
        self._halting = asyncio.Event()
        connection = asyncio.create_task(self._stay_connected())
        try:
            await self._draining.wait()
            log.info("draining: %d running tasks get %ss", len(self.running), self.drain_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_done_or_halted(), self.drain_seconds)
            self._interrupt_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._results_delivered(), 5)
        finally:
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection
            self._set_connected(False)
            self._interrupt_all()  # killed: nothing is reported, but no thread is left waiting
            self._threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped (%d tasks completed)", self.completed)

    async def _all_done_or_halted(self) -> None:
        assert self._halting is not None
        while self.running and not self._halting.is_set():
            await asyncio.sleep(0.1)

    async def _results_delivered(self) -> None:
        while self._jobs or (self.unacknowledged and self.connected):
            await asyncio.sleep(0.05)

    def _interrupt_all(self) -> None:
        for running in self.running.values():
            running.interrupted = True
            running.cancel.set()

    async def _stay_connected(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
                failures = 0
            except Exception as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # grpc can turn our cancellation into another error (an AioRpcError
                    # CANCELLED from the stream's writer): we are stopping all the same.
                    raise asyncio.CancelledError from exc
                if isinstance(exc, grpc.aio.AioRpcError):
                    log.warning("pool stream ended: %s %s", exc.code().name, exc.details())
                else:
                    log.exception("pool stream failed")
            self._set_connected(False)
            await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
            failures += 1

    async def _session(self) -> None:
        assert self._outbox is not None and self._draining is not None
        async with aio_channel(self.identity) as channel:
            call = pb_grpc.PoolStub(channel).Connect()
            await call.write(pb.AgentMessage(register=self._registration()))
            first = await call.read()
            if not isinstance(first, pb.PoolMessage) or first.WhichOneof("kind") != "registered":
                raise ConnectionError("the pool did not acknowledge the registration")
            self._last_received = time.time()
            self._set_connected(True)
            interval = first.registered.heartbeat_interval or 1.0
            for gone in first.registered.superseded:
                self._abandon(gone.task_id, gone.attempt, "the pool superseded it")
            log.info("connected to the pool at %s", self.identity.pool_address)
            for result in list(self.unacknowledged.values()):
                await call.write(pb.AgentMessage(result=result))
            writer = asyncio.create_task(self._write(call, interval))
            try:
                while isinstance(message := await call.read(), pb.PoolMessage):
                    self._last_received = time.time()
                    self._dispatch(message)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncio.InvalidStateError):
                    await writer  # InvalidStateError: it wrote after the call had ended

    async def _write(self, call: Stream, interval: float) -> None:
        assert self._outbox is not None
        while True:
            try:
                message = await asyncio.wait_for(self._outbox.get(), interval)
            except TimeoutError:
                message = pb.AgentMessage(heartbeat=self._heartbeat())
            await call.write(message)
            if message.WhichOneof("kind") != "heartbeat" and self._outbox.empty():
                await call.write(pb.AgentMessage(heartbeat=self._heartbeat()))
            self._last_sent = time.time()

    def _dispatch(self, message: pb.PoolMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "assign":
            self._accept(message.assign)
        elif kind == "cancel":
            key = (message.cancel.task_id, message.cancel.attempt)
            running = self.running.get(key)
            if running is None:
                self._early_cancels.append(key)
            else:
                log.info("task %s: cancel requested", running.task_id)
                running.cancel.set()
        elif kind == "accepted":
            self.unacknowledged.pop((message.accepted.task_id, message.accepted.attempt), None)
        elif kind == "rejected":
            rejected = message.rejected
            self.unacknowledged.pop((rejected.task_id, rejected.attempt), None)
            self._abandon(rejected.task_id, rejected.attempt, rejected.reason)

    def _abandon(self, task_id: str, attempt: int, reason: str) -> None:
        running = self.running.get((task_id, attempt))
        if running is not None:
            log.warning("task %s attempt %d: stopping it, %s", task_id, attempt, reason)
            running.interrupted = True
            running.cancel.set()

    # ---- messages ------------------------------------------------------------------------

    def _registration(self) -> pb.Register:
        facts = self.facts
        return pb.Register(
            capacity=facts.capacity.to_proto(),
            gpus=facts.gpus,
            docker_available=facts.docker_available,
            docker_version=facts.docker_version,
            labels=facts.labels,
            agent_version=__version__,
            # Running attempts, and finished ones whose result the pool has not acknowledged
            # yet (it must not requeue them: the result follows at once).
            running=[
                pb.RunningAttempt(task_id=task_id, attempt=attempt)
                for task_id, attempt in {*self.running, *self.unacknowledged}
            ],
        )

    def _heartbeat(self) -> pb.Heartbeat:
        assert self._draining is not None
        return pb.Heartbeat(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_used_bytes=psutil.virtual_memory().used,
            running_tasks=len(self.running),
            draining=self._draining.is_set(),
        )

    def _send(self, message: pb.AgentMessage) -> None:
        assert self._outbox is not None
        if self._outbox.qsize() >= MAX_BACKLOG and message.WhichOneof("kind") == "log":
            return
        self._outbox.put_nowait(message)

    # ---- running tasks -------------------------------------------------------------------

    def _accept(self, assign: pb.Assign) -> None:
        assert self._draining is not None
        key = (assign.task_id, assign.attempt)
        if key in self.running or key in self.unacknowledged:
            return
        running = RunningAttempt(assign.task_id, assign.attempt, image=assign.image)
        with self._view_lock:
            self.running[key] = running
        if self._draining.is_set():  # raced with drain: hand it straight back
            running.interrupted = True
            running.cancel.set()
        if key in self._early_cancels:
            running.cancel.set()
        job = asyncio.create_task(self._execute(assign, running))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _take_gpus(self, count: int) -> tuple[str, ...]:
        """Devices of its own for a task (the pool never books more GPUs than there are)."""
        if count <= 0 or count > len(self._free_gpus):
            return ()
        taken, self._free_gpus = self._free_gpus[:count], self._free_gpus[count:]
        return tuple(taken)

    async def _execute(self, assign: pb.Assign, running: RunningAttempt) -> None:
        task_id, attempt = assign.task_id, assign.attempt
        self._send(pb.AgentMessage(started=pb.TaskStarted(task_id=task_id, attempt=attempt)))
        log.info("task %s attempt %d: starting %s", task_id, attempt, assign.image)
        task = task_run(assign, self._take_gpus(assign.resources.gpus))
        outcome, status, error = await self._run_task(task, running)
        if running.interrupted:
            status = INTERRUPTED
        result = task_result(task, outcome, status, error)
        self._report(task, result)
        log.info("task %s attempt %d: %s %s", task_id, attempt, status, error)

    async def _run_task(
        self, task: TaskRun, running: RunningAttempt
    ) -> tuple[Outcome | None, str, str]:
        """(outcome, status, error); no outcome when the executor itself failed, not the
        task: then the attempt is interrupted, so that the pool retries it."""
        loop = asyncio.get_running_loop()
        on_output = self._output_sender(loop, task)
        try:
            outcome = await loop.run_in_executor(
                self._threads, self.executor.run, task, on_output, running.cancel
            )
        except Exception as exc:
            log.exception("task %s: executor failed", task.task_id)
            return None, INTERRUPTED, f"agent error: {exc}"
        return outcome, outcome.status, outcome.error

    def _output_sender(self, loop: asyncio.AbstractEventLoop, task: TaskRun) -> OnOutput:
        """The executor's ``on_output``, called on its thread: the output goes up in
        LOG_PIECE chunks, queued through the event loop (the outbox is not thread-safe)."""

        def on_output(stream: str, data: bytes) -> None:
            for start in range(0, len(data), LOG_PIECE):
                chunk = pb.LogChunk(
                    task_id=task.task_id,
                    attempt=task.attempt,
                    stream=stream,
                    data=data[start : start + LOG_PIECE],
                )
                loop.call_soon_threadsafe(self._send, pb.AgentMessage(log=chunk))

        return on_output

    def _report(self, task: TaskRun, result: pb.TaskResult) -> None:
        """Free the task's GPUs, move it from running to recent and send its result, kept
        until the pool acknowledges it."""
        key = (task.task_id, task.attempt)
        self._free_gpus.extend(task.gpu_ids)
        with self._view_lock:
            del self.running[key]
            self.recent.appendleft(
                FinishedAttempt(
                    task.task_id, task.attempt, result.status, result.exit_code, time.time()
                )
            )
            self.completed += 1
        self.unacknowledged[key] = result
        self._send(pb.AgentMessage(result=result))
