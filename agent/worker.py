"""The agent's side of the pool: one stream up to the hub, tasks run as they arrive.

``Worker.run()`` keeps a ``Connect`` stream open (reconnecting with backoff): it
registers the machine's capacity and the attempts still running, sends a heartbeat every
second (with the attempts' usage samples: agent/usagesamples.py), runs each ``Assign`` in
the executor on a thread, streams its output, and reports its result until the pool
acknowledges it. A reconnect resumes: running attempts continue, output not known to be
stored is sent again (agent/tasklogs.py), then unacknowledged results (fencing makes that
safe): a result always follows all of its attempt's output.
An attempt's inputs are fetched before it runs (agent/attemptrun.py) and its result zip is
sent before its result (agent/results.py), on the stream's channel, resumed across
reconnects; the zip is deleted once the pool accepts the result or the attempt is dropped.
An attempt the pool superseded is stopped and dropped, and shown so on the status page.

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

import grpc

from hivemind_cluster.agent.agentmessages import (
    Stream,
    heartbeat,
    registration,
    registration_answer,
)
from hivemind_cluster.agent.attemptrun import Executor as Executor  # scripts import it here
from hivemind_cluster.agent.attemptrun import fetch_and_run
from hivemind_cluster.agent.attempts import (
    REFUSED,
    SUPERSEDED,
    AttemptView,
    FinishedAttempt,
    RunningAttempt,
    WorkerSnapshot,
    restated,
)
from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.metrics import count_finished
from hivemind_cluster.agent.results import ResultZips, sent
from hivemind_cluster.agent.tasklogs import TaskLogs, output_sender
from hivemind_cluster.agent.taskrun import (
    TaskRun,
    task_result,
)
from hivemind_cluster.agent.transfers import Transfers
from hivemind_cluster.agent.usagesamples import UsageBoard
from hivemind_cluster.client.channel import Identity, aio_channel
from hivemind_cluster.model.states import INTERRUPTED
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

log = logging.getLogger("hivemind.agent.worker")
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
RECENT_ATTEMPTS = 20  # finished attempts kept for the status page


class ResendLater(Exception):
    """The pool could not take a message just now: the stream is opened again."""


class Worker:
    def __init__(
        self,
        identity: Identity,
        executor: Executor,
        facts: Facts,
        drain_seconds: float = 30,
        transfers: Transfers | None = None,
    ) -> None:
        self.identity = identity
        self.executor = executor
        self.facts = facts
        self.drain_seconds = drain_seconds
        self._scratch = transfers is None  # its directory goes when the worker stops
        self.transfers = transfers or Transfers.scratch(identity.node_id)
        self._zips = ResultZips(self.transfers.deliver)
        # Keyed by (task, attempt): a task's next attempt may arrive while the old one stops.
        self.running: dict[tuple[str, int], RunningAttempt] = {}
        # Cancels that overtook their Assign (bounded): applied when the Assign arrives.
        self._early_cancels: collections.deque[tuple[str, int]] = collections.deque(maxlen=1000)
        self.unacknowledged: dict[tuple[str, int], pb.TaskResult] = {}
        # Unacknowledged results not written on the current stream yet (an ordered set).
        self._unsent_results: dict[tuple[str, int], None] = {}
        self.logs = TaskLogs()
        self.usage = UsageBoard()  # the running attempts' usage samples, for the heartbeats
        self._backlog_signalled = False
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
        # Messages to write; None: output or results are waiting (``_write_backlog``).
        self._outbox: asyncio.Queue[pb.AgentMessage | None] | None = None
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
            self._zips.drop_all()  # their attempts end with the worker
            if self._scratch:
                self.transfers.remove()
        log.info("worker stopped (%d tasks completed)", self.completed)

    async def _all_done_or_halted(self) -> None:
        """No task runs and no result zip is on its way (a large one takes a while)."""
        assert self._halting is not None
        while (self.running or self._zips.uploads) and not self._halting.is_set():
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
                elif isinstance(exc, ResendLater):
                    log.warning("reconnecting: %s", exc)
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
            registered, before = await registration_answer(call)
            self._last_received = time.time()
            self._set_connected(True)
            interval = registered.heartbeat_interval or 1.0
            for gone in registered.superseded:
                self._supersede(gone.task_id, gone.attempt, "the pool superseded it")
            for ended in registered.ended:
                self._forget_attempt((ended.task_id, ended.attempt))
            log.info("connected to the pool at %s", self.identity.pool_address)
            for early in before:
                self._dispatch(early)
            self.logs.rewind()
            self.usage.rewind()
            self._unsent_results = dict.fromkeys(self.unacknowledged)
            await self._write_backlog(call)
            writer = asyncio.create_task(self._write(call, interval))
            await self.transfers.connected(channel)
            try:
                while isinstance(message := await call.read(), pb.PoolMessage):
                    self._last_received = time.time()
                    self._dispatch(message)
            finally:
                await self.transfers.connected(None)
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncio.InvalidStateError):
                    await writer  # InvalidStateError: it wrote after the call had ended

    async def _write(self, call: Stream, interval: float) -> None:
        assert self._outbox is not None
        while True:
            try:
                message = await asyncio.wait_for(self._outbox.get(), interval)
            except TimeoutError:  # each beat also sends what waits, had a signal gone amiss
                message = pb.AgentMessage(heartbeat=self._heartbeat())
            beat = message is not None and message.HasField("heartbeat")
            if message is None or beat:
                self._backlog_signalled = False
                await self._write_backlog(call)
            if message is not None:
                await call.write(message)
            if not beat and self._outbox.empty():
                await call.write(pb.AgentMessage(heartbeat=self._heartbeat()))
            self._last_sent = time.time()

    async def _write_backlog(self, call: Stream) -> None:
        """Output not written yet, then the results not written yet. The results are taken
        first: every chunk of theirs came before them, so it is among the chunks taken."""
        results = [self.unacknowledged[key] for key in self._unsent_results]  # kept in step
        self._unsent_results.clear()
        for chunk in self.logs.take_unsent():
            await call.write(pb.AgentMessage(log=chunk))
        for result in results:
            await call.write(pb.AgentMessage(result=result))

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
            self._forget_attempt((message.accepted.task_id, message.accepted.attempt))
        elif kind == "rejected":
            rejected = message.rejected
            if rejected.retry:  # a new stream sends everything not acknowledged again
                raise ResendLater(f"the pool could not take a message now: {rejected.reason}")
            reason = f"the pool refused it: {rejected.reason}"
            self._supersede(rejected.task_id, rejected.attempt, reason, rejected.superseded)

    def _forget_attempt(self, key: tuple[str, int]) -> None:
        """The pool needs nothing more of the attempt: it has its result, and so its output
        (sent before it) and its zip, or it refuses the attempt."""
        self.unacknowledged.pop(key, None)
        self._unsent_results.pop(key, None)
        self.logs.close(key)
        self.usage.close(key)
        self._zips.drop(key)

    def _supersede(self, task_id: str, attempt: int, reason: str, superseded: bool = True) -> None:
        """The pool will take nothing more of this attempt: stop it if it runs, forget its
        output and result, and show it as superseded (or refused) on the status page."""
        key = (task_id, attempt)
        log.warning("task %s attempt %d: dropping it, %s", task_id, attempt, reason)
        self._forget_attempt(key)
        running = self.running.get(key)
        if running is not None:
            running.interrupted = running.superseded = True
            running.cancel.set()
        with self._view_lock:
            restated(self.recent, key, SUPERSEDED if superseded else REFUSED)

    # ---- messages ------------------------------------------------------------------------

    def _registration(self) -> pb.Register:
        # Running attempts, and finished ones whose result the pool has not acknowledged
        # yet or whose zip is on its way (it must not requeue them: the result follows).
        return registration(self.facts, {*self.running, *self._zips.uploads, *self.unacknowledged})

    def _heartbeat(self) -> pb.Heartbeat:
        assert self._draining is not None
        beat = heartbeat(len(self.running), self._draining.is_set())
        beat.usage.extend(self.usage.take_unsent())
        return beat

    def _send(self, message: pb.AgentMessage) -> None:
        assert self._outbox is not None
        self._outbox.put_nowait(message)

    def _signal_backlog(self) -> None:
        """Have the writer send the waiting output and results (one signal queued at most,
        however much waits while disconnected)."""
        assert self._outbox is not None
        if not self._backlog_signalled:
            self._backlog_signalled = True
            self._outbox.put_nowait(None)

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
        output = self.logs.open(task_id, attempt)
        on_output = output_sender(asyncio.get_running_loop(), output, self._signal_backlog)
        gpus = self._take_gpus(assign.resources.gpus)
        series = self.usage.open(task_id, attempt)
        task, outcome, status, error = await fetch_and_run(
            self.executor,
            self.transfers,
            self._threads,
            assign,
            gpus,
            running.cancel,
            on_output,
            series,
        )
        if running.interrupted:
            status = INTERRUPTED
        count_finished(status)
        result = task_result(task, outcome, status, error)
        result.log_bytes = output.produced
        self._finish(task, result, running)
        zipped = outcome.output if outcome is not None else None
        if running.superseded:  # the pool takes nothing more of it
            if zipped is not None:
                zipped.path.unlink(missing_ok=True)
            return
        report, refused = (result, "") if zipped is None else await sent(self._zips, result, zipped)
        if refused:
            self._supersede(task_id, attempt, f"the pool refused its result: {refused}")
        if report is not None:
            self._report(report)
            log.info("task %s attempt %d: %s %s", task_id, attempt, report.status, report.error)

    def _finish(self, task: TaskRun, result: pb.TaskResult, running: RunningAttempt) -> None:
        """Free the task's GPUs and move it from running to recent."""
        key = (task.task_id, task.attempt)
        self._free_gpus.extend(task.gpu_ids)
        shown = SUPERSEDED if running.superseded else result.status
        with self._view_lock:
            del self.running[key]
            self.recent.appendleft(
                FinishedAttempt(task.task_id, task.attempt, shown, result.exit_code, time.time())
            )
            self.completed += 1

    def _report(self, result: pb.TaskResult) -> None:
        """Send the result, kept until the pool acknowledges it."""
        key = (result.task_id, result.attempt)
        self.unacknowledged[key] = result
        self._unsent_results[key] = None
        self._signal_backlog()
