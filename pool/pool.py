"""The node pool: connected agents, the queue, placement, liveness — one asyncio object.

Durable truth is in Redis (``TaskStore``); the ``Scheduler`` is the in-memory mirror the
pool alone writes. ``Pool`` wires the parts, each owning its own state, and turns what
agents and operators do into calls on them:

* ``Liveness`` (liveness.py) — the agent sessions, when each node was last heard, the
  live state flushed to Redis once a second;
* ``AttemptWatchdog`` (watchdog.py) — placed attempts that never start or never end;
* ``Dispatch`` (dispatch.py) — the queued tasks, placement and the ``Assign`` messages;
* ``Settlement`` (settlement.py) — ended tasks paid for, in batches;
* ``MemberCache`` (members.py) — which known workers are still members.

Four loops run beside the gRPC handlers: schedule (``Dispatch``, woken by a submission, a
finished task or a (re)connected worker), reap (a worker silent for ``heartbeat_timeout``
seconds is lost: its attempts are requeued with a new attempt number, or fail on their
last attempt; overdue attempts are taken back), flush (live state into Redis) and settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import redis.asyncio as aioredis

from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, StaleAttempt
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.states import PENDING_STATES, TaskState
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool import messages, registry
from hivemind_cluster.pool.accounting import Accounting
from hivemind_cluster.pool.auth import Caller
from hivemind_cluster.pool.dispatch import Dispatch
from hivemind_cluster.pool.history import HistorySampler
from hivemind_cluster.pool.ledger import AsyncLedger
from hivemind_cluster.pool.liveness import HEARTBEAT_INTERVAL, Liveness
from hivemind_cluster.pool.members import MemberCache
from hivemind_cluster.pool.metrics import HEARTBEATS, STREAMS_OPENED
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.pool.registry import AgentSession
from hivemind_cluster.pool.scheduler import Scheduler
from hivemind_cluster.pool.settlement import Settlement
from hivemind_cluster.pool.store import load_libraries
from hivemind_cluster.pool.taskdata import TaskBlobs
from hivemind_cluster.pool.taskstore import TaskStore, check_task_id
from hivemind_cluster.pool.watchdog import AttemptWatchdog, Overdue
from hivemind_cluster.protos import pool_pb2 as pb

log = logging.getLogger("hivemind.pool")
REDIS_CONNECTIONS = 256
# How often silent workers are looked for: a lost one is noticed within timeout + this.
REAP_INTERVAL = 0.25
RECONCILE_EVERY = 20  # reaper passes (5 s)
# After a restart, how much longer than heartbeat_timeout a worker with running attempts has
# to come back: its overlay first needs a new WireGuard handshake with the new hub (the
# agent forces one after two silent 5 s probes), then its stream reconnects (backoff ≤ 5 s).
RESTORE_GRACE = 30.0
# Stopping is warm, then cold, and bounded: the loops are cancelled at once (between passes
# they only wait); a node's connect or loss under way gets STOP_GRACE seconds to finish,
# then is cancelled. A task that swallows its cancellation (under Python 3.11 a library's
# ``wait_for`` or timeout racing it can) is cancelled again every CANCEL_AGAIN seconds, and
# left behind, logged, after STOP_WAIT: ``stop`` never waits on it forever.
STOP_GRACE = 2.0
STOP_WAIT = 2.0
CANCEL_AGAIN = 0.2


class Pool:
    def __init__(
        self,
        settings: HubSettings,
        db: Any,
        raw_db: Any,
        blobs: BlobStore,
    ) -> None:
        self.settings = settings
        self.db = db
        self.raw_db = raw_db
        self.blobs = blobs  # synchronous: called in threads (pool/taskdata.py in_store_thread)
        self.tasks = TaskStore(db, settings.log_cap_bytes)
        self.data = TaskBlobs(blobs, self.tasks, settings.max_input_bytes)
        self.rates = RateCard.from_settings(settings)
        self.ledger = AsyncLedger(db)
        self.accounting = Accounting(self.ledger, self.rates, self.tasks)
        self.scheduler = Scheduler()
        self.liveness = Liveness(db, settings.heartbeat_timeout)
        self.watchdog = AttemptWatchdog(self.rates)
        self.dispatch = Dispatch(
            db, self.tasks, self.scheduler, self.liveness, self.watchdog, settings.allow_pulls
        )
        self.settlement = Settlement(self.accounting, self.data)
        self.members = MemberCache(db, self.scheduler)
        self._passes = 0
        self._streams_seen: set[str] = set()  # nodes that opened a stream to this pool
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # ---- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: HubSettings, redis_password: str, blobs: BlobStore) -> Pool:
        """The hub's pool: its Redis on the overlay address, its data in ``blobs``."""

        def client(decode: bool) -> aioredis.Redis:
            # Blocking pool: past max_connections a call waits for a free connection
            # instead of failing (the default pool raises at 100 in flight).
            connections = aioredis.BlockingConnectionPool(
                host=settings.hub_ip,
                port=settings.redis_port,
                password=redis_password,
                decode_responses=decode,
                socket_connect_timeout=2,
                max_connections=REDIS_CONNECTIONS,
                timeout=30,
            )
            return aioredis.Redis(connection_pool=connections)

        pool = cls(settings, client(True), client(False), blobs)
        await load_libraries(pool.db)
        await pool.start()
        return pool

    async def close(self) -> None:
        await self.stop()
        await self.db.aclose()
        await self.raw_db.aclose()

    async def start(self) -> None:
        self._stopping = False
        await self.accounting.start()
        await self.settlement.start()
        await self.restore()
        sampler = HistorySampler(  # the charts' samples (pool/history.py)
            self.db, self.liveness, self.scheduler
        )
        loops = {
            "schedule": self.dispatch.run_forever(),
            "reap": self._repeat(REAP_INTERVAL, self.reap_once, "reaper pass failed"),
            "flush": self._repeat(HEARTBEAT_INTERVAL, self.flush_once, "heartbeat flush failed"),
            "settle": self.settlement.run_forever(),
            "history": self._repeat(sampler.step, sampler.sample_once, "history sample failed"),
        }
        for name, loop in loops.items():
            self._loops.append(asyncio.create_task(loop, name=name))

    async def stop(self) -> None:
        """Stop the loops, then the node changes under way (see STOP_GRACE): in bounded
        time, so that nothing of this pool writes to Redis once it returns, or almost."""
        self._stopping = True
        self.liveness.close_all()
        loops, self._loops = self._loops, []
        await cancel_and_wait(loops, STOP_WAIT)
        changes = self.liveness.changes_in_flight()
        if changes:
            await asyncio.wait(changes, timeout=STOP_GRACE)
            await cancel_and_wait(changes, STOP_WAIT)

    async def _repeat(
        self, interval: float, step: Callable[[], Awaitable[None]], failed: str
    ) -> None:
        """Run ``step`` every ``interval`` seconds; a failure is logged and waits its turn.
        Stopping ends it at its next turn too, should its cancellation have been lost."""
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception:
                log.exception(failed)

    async def restore(self) -> None:
        """Rebuild the in-memory mirror from Redis (after a hub restart)."""
        now = time.monotonic()
        members = await self.db.smembers(keys.WORKERS)
        for node_id in sorted(members):
            raw = await self.db.hgetall(keys.WORKER.format(id=node_id))
            if not raw:
                continue
            capacity = json.loads(raw.get("capacity") or "{}")
            self.scheduler.upsert_worker(node_id, raw.get("name", ""), Resources(**capacity))
            running = await self.tasks.on_node(node_id)
            for record in running:
                self.scheduler.allocate(record.id, node_id, record.request, record.attempt)
                self.watchdog.watch(record, record.attempt, since=now)
                if record.status == TaskState.RUNNING:
                    self.watchdog.mark_started(record.id, record.attempt)
            if running:  # it has until the timeout and the grace to come back
                self.liveness.heard_from(node_id, at=now + RESTORE_GRACE)
        for record in await self.tasks.queued():
            self.enqueue(record)
        self.dispatch.wake()

    # ---- queries -------------------------------------------------------------------------

    @property
    def sessions(self) -> Mapping[str, AgentSession]:
        """The connected agents by node id (read-only)."""
        return self.liveness.sessions

    async def nodes(self, owner: str = "") -> list[pb.NodeState]:
        """Every member with its live state; with ``owner``, the ids of that account's
        running tasks only (the counts stay in ``running_count``)."""
        return await registry.node_states(self.db, self.sessions, self.scheduler, owner)

    # ---- agents --------------------------------------------------------------------------

    async def connect(self, caller: Caller, register: pb.Register) -> AgentSession:
        """A worker (re)connected: record its facts, reconcile its running attempts."""
        capacity = Resources.from_proto(register.capacity)
        if capacity.cpu_millis <= 0 or capacity.memory_bytes <= 0 or capacity.gpus < 0:
            raise InvalidInput("registration must report positive CPU and memory capacity")
        return await self.liveness.change(
            caller.node_id, lambda: self._connect(caller, register, capacity)
        )

    async def _connect(
        self, caller: Caller, register: pb.Register, capacity: Resources
    ) -> AgentSession:
        node_id = caller.node_id
        STREAMS_OPENED.labels("reconnect" if node_id in self._streams_seen else "first").inc()
        self._streams_seen.add(node_id)
        self.liveness.heard_from(node_id)  # alive: the reaper must wait
        self.scheduler.stop_placing_on(node_id)  # nothing is placed here until reconciled
        self.liveness.close_session(node_id)
        session = AgentSession(caller, register)
        worker = self.scheduler.upsert_worker(node_id, caller.name, capacity)
        await registry.save_registration(self.db, session, capacity)
        await self.accounting.open(node_id, "worker")
        recognised, superseded = await self._reconcile_running(session)
        ended = await self.tasks.ended_by(node_id, superseded)
        session.send(messages.registered_message(node_id, HEARTBEAT_INTERVAL, superseded, ended))
        worker.connected, worker.draining = True, False
        self.liveness.attach(session)
        log.info(
            "worker %s (%s) connected: %s, %d running",
            node_id,
            caller.name,
            capacity.describe(),
            recognised,
        )
        self.dispatch.wake()
        return session

    async def _reconcile_running(self, session: AgentSession) -> tuple[int, list[tuple[str, int]]]:
        """Book the attempts the agent still runs; requeue those Redis has on the node but
        the agent does not. Returns how many it runs and, sorted, the reported attempts
        that are no longer the node's (the agent drops them)."""
        node_id = session.node_id
        reported = {(r.task_id, r.attempt) for r in session.register.running}
        recognised = set()
        for record in await self.tasks.on_node(node_id):
            if (record.id, record.attempt) in reported:
                recognised.add((record.id, record.attempt))
                self.scheduler.allocate(record.id, node_id, record.request, record.attempt)
                if record.cancel_requested:
                    session.send(messages.cancel_message(record.id, record.attempt))
            else:
                await self._requeue(record, node_id, "its agent restarted without it")
        return len(recognised), sorted(reported - recognised)

    def disconnect(self, session: AgentSession) -> None:
        """The stream ended. The worker keeps its tasks until it is lost or reconnects."""
        if not self.liveness.detach(session):
            return
        self.scheduler.stop_placing_on(session.node_id)
        log.info("worker %s disconnected", session.node_id)

    async def handle(self, session: AgentSession, message: pb.AgentMessage) -> None:
        self.liveness.heard_from(session.node_id)
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            self._heartbeat(session, message.heartbeat)
            if message.heartbeat.usage:  # its attempts' usage samples (pool/taskusage.py)
                await self.tasks.record_usage(session.node_id, message.heartbeat.usage)
            return
        try:
            if kind == "started":
                await self._started(session, message.started)
            elif kind == "log":
                await self._log(session, message.log)
            elif kind == "result":
                await self._result(session, message.result)
            else:
                raise InvalidInput(f"unexpected {kind or 'empty'} message on an open stream")
        except HiveMindError as exc:
            session.send(messages.rejected_message(message, exc))

    def _heartbeat(self, session: AgentSession, heartbeat: pb.Heartbeat) -> None:
        HEARTBEATS.inc()
        self.liveness.beat(session, heartbeat)
        if self.scheduler.set_draining(session.node_id, heartbeat.draining):
            self.dispatch.wake()

    async def _started(self, session: AgentSession, started: pb.TaskStarted) -> None:
        await self.tasks.start(check_task_id(started.task_id), started.attempt, session.node_id)
        self.watchdog.mark_started(started.task_id, started.attempt)

    async def _log(self, session: AgentSession, chunk: pb.LogChunk) -> None:
        messages.check_log_chunk(chunk)
        await self.tasks.log(
            chunk.task_id,
            chunk.attempt,
            session.node_id,
            chunk.stream,
            chunk.data,
            messages.chunk_offset(chunk),
        )

    async def _result(self, session: AgentSession, result: pb.TaskResult) -> None:
        messages.check_result(result)
        await self.data.check_result(session.node_id, result)
        status = await self.tasks.finish(session.node_id, result)
        self._forget_attempt(result.task_id, result.attempt)
        session.send(messages.accepted_message(result))
        await self._after_attempt(result.task_id, status)
        log.info("task %s attempt %d: %s", result.task_id, result.attempt, status)
        self.dispatch.wake()

    # ---- attempts ------------------------------------------------------------------------

    def enqueue(self, record: TaskRecord) -> None:
        self.dispatch.enqueue(record)

    def settle(self, task_id: str) -> None:
        """Have an ended task settled soon, off the scheduling path (in batches)."""
        self.settlement.settle(task_id)

    async def _after_attempt(self, task_id: str, status: str) -> None:
        """An attempt ended: queue the task again for its next one, or have it settled."""
        if status in PENDING_STATES:
            self.enqueue(await self.tasks.get(task_id))
        else:
            self.settle(task_id)

    def _forget_attempt(self, task_id: str, attempt: int) -> None:
        """An attempt ended: its capacity comes back, the watchdog stops watching it."""
        self.scheduler.release(task_id, attempt)
        self.watchdog.forget(task_id, attempt)

    async def _requeue(self, record: TaskRecord, node_id: str, reason: str) -> None:
        try:
            status = await self.tasks.requeue(record.id, record.attempt, node_id, reason)
        except StaleAttempt:
            return  # it moved on meanwhile (finished, or already requeued)
        self._forget_attempt(record.id, record.attempt)
        log.warning("task %s attempt %d: %s; now %s", record.id, record.attempt, reason, status)
        await self._after_attempt(record.id, status)

    async def _take_back(self, overdue: Overdue) -> None:
        """An attempt that never started, or never ended: cancel it on its agent, then
        requeue it, or record it timed out (the agent may be stuck)."""
        task_id, attempt = overdue.task_id, overdue.attempt
        node_id = self.scheduler.node_holding(task_id)
        self.liveness.send(node_id, messages.cancel_message(task_id, attempt))
        reason = overdue.reason(node_id)
        if overdue.started:
            with contextlib.suppress(StaleAttempt):
                await self.tasks.finish(node_id, overdue.timed_out(reason))
            self._forget_attempt(task_id, attempt)
            self.settle(task_id)
        else:
            record = await self.tasks.get(task_id)
            if record.attempt == attempt:
                await self._requeue(record, node_id, reason)
            self._forget_attempt(task_id, attempt)  # requeued, or it had moved on
        log.warning("task %s attempt %d: %s", task_id, attempt, reason)

    # ---- liveness ------------------------------------------------------------------------

    async def lose(self, node_id: str, only_if_silent: bool = False) -> None:
        """Requeue the worker's attempts and stop scheduling on it (silent, or revoked)."""
        await self.liveness.change(node_id, lambda: self._lose(node_id, only_if_silent))

    async def _lose(self, node_id: str, only_if_silent: bool) -> None:
        if only_if_silent and not self.liveness.is_silent(node_id):
            return  # it reconnected while we waited for the lock
        self.scheduler.stop_placing_on(node_id)
        await self.liveness.mark_lost(node_id)
        reason = f"node {node_id} lost (no heartbeat for {self.settings.heartbeat_timeout}s)"
        for record in await self.tasks.on_node(node_id):
            await self._requeue(record, node_id, reason)
        self.liveness.forget(node_id)  # only now: a failure above is retried next pass
        log.warning("%s", reason)

    async def reap_once(self) -> None:
        for node_id in self.liveness.silent_nodes():
            await self.lose(node_id, only_if_silent=True)
        for session in await self.liveness.newly_revoked():
            log.warning("worker %s revoked: closing its stream", session.node_id)
            await self.lose(session.node_id)
        for overdue in self.watchdog.overdue():
            await self._take_back(overdue)
        self._passes += 1
        if self._passes % RECONCILE_EVERY == 0:
            await self.dispatch.reconcile()

    async def flush_once(self) -> None:
        await self.liveness.flush_once()


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]], timeout: float) -> None:
    """Cancel ``tasks`` and wait for them to end, ``timeout`` seconds at the most: those
    still running are cancelled again every CANCEL_AGAIN seconds (a cancellation can be
    swallowed), and any left at the end are logged, not awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending and (remaining := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(CANCEL_AGAIN, remaining))
    for task in pending:
        log.error("task %s ignored its cancellation: left behind", task.get_name())
