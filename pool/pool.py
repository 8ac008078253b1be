"""The node pool: connected agents, the queue, placement, liveness — one asyncio object.

Durable truth is in Redis (``TaskStore``); the ``Scheduler`` is the in-memory mirror the
pool alone writes. Three loops run beside the gRPC handlers:

* schedule  — woken by a submission, a finished task or a (re)connected worker: places
              queued tasks and sends each ``Assign`` down its worker's stream at once;
* reap      — a worker silent for ``heartbeat_timeout`` seconds is lost: its attempts are
              requeued with a new attempt number (or fail on their last attempt);
* flush     — writes heartbeat state to Redis once a second, in one pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from hivemind_cluster.core.errors import (
    HiveMindError,
    InvalidInput,
    StaleAttempt,
)
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import membership
from hivemind_cluster.model.bundles import MAX_OUTPUT_BYTES
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.states import PENDING_STATES, REPORTED_STATES, NodeState, TaskState
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool import registry
from hivemind_cluster.pool.accounting import Accounting
from hivemind_cluster.pool.auth import Caller
from hivemind_cluster.pool.ledger import AsyncLedger
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.pool.registry import AgentSession
from hivemind_cluster.pool.scheduler import Scheduler
from hivemind_cluster.pool.store import load_libraries
from hivemind_cluster.pool.taskstore import TaskStore, check_task_id
from hivemind_cluster.protos import pool_pb2 as pb

log = logging.getLogger("hivemind.pool")
HEARTBEAT_INTERVAL = 1.0
MAX_LOG_CHUNK = 256 * 1024
REDIS_CONNECTIONS = 256
FLUSH_CHUNK = 500
# How often silent workers are looked for: a lost one is noticed within timeout + this.
REAP_INTERVAL = 0.25
SETTLE_BATCH = 20  # ended tasks settled concurrently (each uses one Redis connection)
RECONCILE_EVERY = 20  # reaper passes (5 s)
START_DEADLINE = 60  # seconds an assigned attempt may take to start
ATTEMPT_GRACE = 60  # seconds past its timeout before the pool gives up on an attempt


class Pool:
    def __init__(
        self,
        settings: HubSettings,
        db: Any,
        raw_db: Any,
        data_dir: Path,
    ) -> None:
        self.settings = settings
        self.db = db
        self.raw_db = raw_db
        self.tasks = TaskStore(db, data_dir, settings.log_cap_bytes)
        self.rates = RateCard.from_settings(settings)
        self.ledger = AsyncLedger(db)
        self.accounting = Accounting(self.ledger, self.rates, self.tasks)
        self.scheduler = Scheduler()
        self.sessions: dict[str, AgentSession] = {}
        self.last_seen: dict[str, float] = {}  # node id -> monotonic time it was last heard
        self.queued: dict[str, TaskRecord] = {}  # what an Assign needs, for queued tasks
        self.wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._revoked_seen = -1
        self._last_wall: dict[str, float] = {}  # disconnected worker -> its last heartbeat
        self._locks: dict[str, asyncio.Lock] = {}
        # Attempts placed by this pool: (task, attempt) -> (monotonic time, timeout seconds).
        self._assigned_at: dict[tuple[str, int], tuple[float, int]] = {}
        self._started: set[tuple[str, int]] = set()
        self._passes = 0
        self._to_settle: asyncio.Queue[str] = asyncio.Queue()
        # Which known workers are still members, and when that was read (operations.py).
        self.member_cache: tuple[float, dict[str, bool]] = (0.0, {})
        self._loops: list[asyncio.Task[None]] = []

    # ---- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: HubSettings, redis_password: str) -> Pool:
        """The hub's pool: its Redis on the overlay address, bundles in the state dir."""

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

        pool = cls(settings, client(True), client(False), settings.path / "tasks")
        await load_libraries(pool.db)
        await pool.start()
        return pool

    async def close(self) -> None:
        await self.stop()
        await self.db.aclose()
        await self.raw_db.aclose()

    async def start(self) -> None:
        await self.accounting.start()
        await self.restore()
        loops = (self._schedule_forever, self._reap_forever, self._flush_forever)
        for loop in (*loops, self._settle_forever):
            self._loops.append(asyncio.create_task(loop(), name=loop.__name__))

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops.clear()

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
                self._assigned_at[(record.id, record.attempt)] = (now, record.timeout_seconds)
                if record.status == TaskState.RUNNING:
                    self._started.add((record.id, record.attempt))
            if running:
                self.last_seen[node_id] = now  # it has until the timeout to come back
        for record in await self.tasks.queued():
            self.enqueue(record)
        self.wake.set()

    # ---- queries -------------------------------------------------------------------------

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
        async with self._node_lock(caller.node_id):
            return await asyncio.shield(self._connect(caller, register, capacity))

    def _node_lock(self, node_id: str) -> asyncio.Lock:
        """Serialises connect and lose of one node (each awaits Redis several times)."""
        return self._locks.setdefault(node_id, asyncio.Lock())

    async def _connect(
        self, caller: Caller, register: pb.Register, capacity: Resources
    ) -> AgentSession:
        self.last_seen[caller.node_id] = time.monotonic()  # alive: the reaper must wait
        known = self.scheduler.workers.get(caller.node_id)
        if known is not None:
            known.connected = False  # nothing is placed here until reconciled
        previous = self.sessions.pop(caller.node_id, None)
        if previous is not None:
            previous.close()
        session = AgentSession(caller, register)
        worker = self.scheduler.upsert_worker(caller.node_id, caller.name, capacity)
        await registry.save_registration(self.db, session, capacity)
        await self.accounting.open(caller.node_id, "worker")
        reported = {(r.task_id, r.attempt) for r in register.running}
        recognised = set()
        for record in await self.tasks.on_node(caller.node_id):
            if (record.id, record.attempt) in reported:
                recognised.add((record.id, record.attempt))
                self.scheduler.allocate(record.id, caller.node_id, record.request, record.attempt)
                if record.cancel_requested:
                    session.send(cancel_message(record.id, record.attempt))
            else:
                await self._requeue(record, caller.node_id, "its agent restarted without it")
        superseded = [
            pb.RunningAttempt(task_id=t, attempt=a) for t, a in sorted(reported - recognised)
        ]
        session.send(
            pb.PoolMessage(
                registered=pb.Registered(
                    node_id=caller.node_id,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    superseded=superseded,
                )
            )
        )
        worker.connected, worker.draining = True, False
        self.sessions[caller.node_id] = session
        self.last_seen[caller.node_id] = time.monotonic()
        log.info(
            "worker %s (%s) connected: %s, %d running",
            caller.node_id,
            caller.name,
            capacity.describe(),
            len(recognised),
        )
        self.wake.set()
        return session

    def disconnect(self, session: AgentSession) -> None:
        """The stream ended. The worker keeps its tasks until it is lost or reconnects."""
        if self.sessions.get(session.node_id) is not session:
            return
        del self.sessions[session.node_id]
        worker = self.scheduler.workers.get(session.node_id)
        if worker is not None:
            worker.connected = False
        self._last_wall[session.node_id] = session.last_heartbeat_wall
        self._dirty.add(session.node_id)
        log.info("worker %s disconnected", session.node_id)

    async def handle(self, session: AgentSession, message: pb.AgentMessage) -> None:
        self.last_seen[session.node_id] = time.monotonic()
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            self._heartbeat(session, message.heartbeat)
            return
        try:
            if kind == "started":
                started = message.started
                await self.tasks.start(
                    check_task_id(started.task_id), started.attempt, session.node_id
                )
                self._started.add((started.task_id, started.attempt))
            elif kind == "log":
                await self._log(session, message.log)
            elif kind == "result":
                await self._result(session, message.result)
            else:
                raise InvalidInput(f"unexpected {kind or 'empty'} message on an open stream")
        except HiveMindError as exc:
            task = getattr(message, kind) if kind in ("started", "log", "result") else None
            session.send(
                pb.PoolMessage(
                    rejected=pb.Rejected(
                        task_id=getattr(task, "task_id", ""),
                        attempt=getattr(task, "attempt", 0),
                        reason=exc.message,
                    )
                )
            )

    def _heartbeat(self, session: AgentSession, heartbeat: pb.Heartbeat) -> None:
        session.heartbeat = heartbeat
        session.last_heartbeat_wall = time.time()
        self._dirty.add(session.node_id)
        worker = self.scheduler.workers.get(session.node_id)
        if worker is not None and worker.draining != heartbeat.draining:
            worker.draining = heartbeat.draining
            self.wake.set()

    async def _log(self, session: AgentSession, chunk: pb.LogChunk) -> None:
        if chunk.stream not in ("stdout", "stderr"):
            raise InvalidInput(f"log stream must be stdout or stderr, not {chunk.stream[:20]!r}")
        if len(chunk.data) > MAX_LOG_CHUNK:
            raise InvalidInput(f"log chunk larger than {MAX_LOG_CHUNK} bytes")
        await self.tasks.log(
            chunk.task_id, chunk.attempt, session.node_id, chunk.stream, chunk.data
        )

    async def _result(self, session: AgentSession, result: pb.TaskResult) -> None:
        if result.status not in REPORTED_STATES:
            raise InvalidInput(f"result status {result.status[:20]!r} is not a final state")
        if len(result.output_bundle) > MAX_OUTPUT_BYTES:
            raise InvalidInput("result bundle is larger than the pool accepts")
        status = await self.tasks.finish(session.node_id, result)
        self._forget_attempt(result.task_id, result.attempt)
        session.send(
            pb.PoolMessage(
                accepted=pb.ResultAccepted(task_id=result.task_id, attempt=result.attempt)
            )
        )
        await self._after_attempt(result.task_id, status)
        log.info("task %s attempt %d: %s", result.task_id, result.attempt, status)
        self.wake.set()

    async def _after_attempt(self, task_id: str, status: str) -> None:
        """An attempt ended: queue the task again for its next one, or have it settled."""
        if status in PENDING_STATES:
            self.enqueue(await self.tasks.get(task_id))
        else:
            self.settle(task_id)

    def settle(self, task_id: str) -> None:
        """Have an ended task settled soon, off the scheduling path (in batches)."""
        self._to_settle.put_nowait(task_id)

    async def _settle_forever(self) -> None:
        """Settle ended tasks, up to SETTLE_BATCH at once; a failure is retried at start."""
        while True:
            batch = [await self._to_settle.get()]
            while len(batch) < SETTLE_BATCH and not self._to_settle.empty():
                batch.append(self._to_settle.get_nowait())
            outcomes = await asyncio.gather(
                *(self.accounting.settle(task_id) for task_id in batch), return_exceptions=True
            )
            for task_id, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    log.error("task %s: settlement failed (%s); retried at start", task_id, outcome)

    # ---- scheduling ----------------------------------------------------------------------

    def enqueue(self, record: TaskRecord) -> None:
        self.queued[record.id] = record
        self.scheduler.enqueue(record.id, record.score, record.attempt, record.request)
        self.wake.set()

    async def schedule_once(self) -> int:
        placements = self.scheduler.place()
        if not placements:
            return 0
        try:
            recorded = await self.tasks.assign_many(
                [(p.task_id, p.attempt, p.node_id) for p in placements]
            )
        except Exception:
            for placement in placements:  # nothing was recorded: queue them again
                self.scheduler.release(placement.task_id, placement.attempt)
                record = self.queued.get(placement.task_id)
                if record is not None:
                    self.scheduler.enqueue(record.id, record.score, record.attempt, record.request)
            raise
        now = time.monotonic()
        sent = 0
        for placement, ok in zip(placements, recorded, strict=True):
            record = self.queued.pop(placement.task_id, None)
            if not ok or record is None:
                self.scheduler.release(placement.task_id, placement.attempt)
                continue
            self._assigned_at[(record.id, placement.attempt)] = (now, record.timeout_seconds)
            session = self.sessions.get(placement.node_id)
            if session is None:
                continue  # the worker left: it is lost, or the watchdog requeues the attempt
            try:
                bundle = b""
                if record.bundle_bytes:
                    bundle = await asyncio.to_thread(self.tasks.input_bundle, record.id)
            except OSError as exc:
                log.error("task %s: cannot read its input bundle: %s", record.id, exc)
                continue  # left assigned and not started: the watchdog requeues it
            session.send(pb.PoolMessage(assign=_assignment(record, placement.attempt, bundle)))
            sent += 1
        return sent

    async def _schedule_forever(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                while await self.schedule_once():
                    pass
            except Exception:
                log.exception("scheduling pass failed; retrying")
                await asyncio.sleep(0.5)
                self.wake.set()

    # ---- liveness ------------------------------------------------------------------------

    async def _requeue(self, record: TaskRecord, node_id: str, reason: str) -> None:
        try:
            status = await self.tasks.requeue(record.id, record.attempt, node_id, reason)
        except StaleAttempt:
            return  # it moved on meanwhile (finished, or already requeued)
        self._forget_attempt(record.id, record.attempt)
        log.warning("task %s attempt %d: %s; now %s", record.id, record.attempt, reason, status)
        await self._after_attempt(record.id, status)

    async def lose(self, node_id: str, only_if_silent: bool = False) -> None:
        """Requeue the worker's attempts and stop scheduling on it (silent, or revoked)."""
        async with self._node_lock(node_id):
            seen = self.last_seen.get(node_id)
            deadline = time.monotonic() - self.settings.heartbeat_timeout
            if only_if_silent and (seen is None or seen >= deadline):
                return  # it reconnected while we waited for the lock
            await asyncio.shield(self._lose(node_id))

    async def _lose(self, node_id: str) -> None:
        session = self.sessions.pop(node_id, None)
        if session is not None:
            session.close()
        worker = self.scheduler.workers.get(node_id)
        if worker is not None:
            worker.connected = False
        if session is not None:
            self._last_wall[node_id] = session.last_heartbeat_wall
        last_heartbeat = self._last_wall.get(node_id, 0)
        lost = registry.live_state(None, NodeState.LOST, last_heartbeat)
        await self.db.hset(keys.WORKER_LIVE, node_id, lost)
        reason = f"node {node_id} lost (no heartbeat for {self.settings.heartbeat_timeout}s)"
        for record in await self.tasks.on_node(node_id):
            await self._requeue(record, node_id, reason)
        self.last_seen.pop(node_id, None)  # only now: a failure above is retried next pass
        log.warning("%s", reason)

    async def reap_once(self) -> None:
        deadline = time.monotonic() - self.settings.heartbeat_timeout
        for node_id, seen in list(self.last_seen.items()):
            if seen < deadline:
                await self.lose(node_id, only_if_silent=True)
        await self._drop_revoked()
        await self._watch_attempts()
        self._passes += 1
        if self._passes % RECONCILE_EVERY == 0:
            await self._reconcile_queue()

    async def _watch_attempts(self) -> None:
        """Attempts that never start, or never end, are taken back (the agent may be stuck)."""
        now = time.monotonic()
        for (task_id, attempt), (assigned, timeout) in list(self._assigned_at.items()):
            started = (task_id, attempt) in self._started
            limit = timeout + ATTEMPT_GRACE if started else START_DEADLINE
            if now - assigned <= limit:
                continue
            held = self.scheduler.allocations.get(task_id)
            node_id = held[0] if held else ""
            session = self.sessions.get(node_id)
            if session is not None:
                session.send(cancel_message(task_id, attempt))
            if started:
                reason = f"no result {ATTEMPT_GRACE}s after its {timeout}s timeout"
                overdue = pb.TaskResult(
                    task_id=task_id, attempt=attempt, status="timed_out", exit_code=-1, error=reason
                )
                with contextlib.suppress(StaleAttempt):
                    await self.tasks.finish(node_id, overdue)
                self._forget_attempt(task_id, attempt)
                self.settle(task_id)
            else:
                reason = f"not started {START_DEADLINE}s after it was assigned to {node_id}"
                record = await self.tasks.get(task_id)
                if record.attempt == attempt:
                    await self._requeue(record, node_id, reason)
                self._forget_attempt(task_id, attempt)  # requeued, or it had moved on
            log.warning("task %s attempt %d: %s", task_id, attempt, reason)

    async def _reconcile_queue(self) -> None:
        """Redis's queue is the truth: queue what memory misses, drop what it has not."""
        queued = set(await self.db.zrange(keys.QUEUE, 0, -1))
        for task_id in list(self.scheduler.pending):
            if task_id not in queued:
                self.scheduler.dequeue(task_id)
                self.queued.pop(task_id, None)
        missing = [
            t
            for t in queued
            if t not in self.scheduler.pending and t not in self.scheduler.allocations
        ]
        settled = time.time() - 5  # newer ones may be between their Lua call and enqueue
        for record in await self.tasks.by_ids(missing):
            if record.status in PENDING_STATES and record.submitted_at < settled:
                log.warning("task %s was queued in Redis only: queueing it", record.id)
                self.enqueue(record)

    def _forget_attempt(self, task_id: str, attempt: int) -> None:
        """An attempt ended: its capacity comes back, the watchdog stops watching it."""
        self.scheduler.release(task_id, attempt)
        self._assigned_at.pop((task_id, attempt), None)
        self._started.discard((task_id, attempt))

    async def _drop_revoked(self) -> None:
        """Close the streams of workers revoked while connected (checked when the set grows)."""
        revoked_count = await membership.revoked_count(self.db)
        if revoked_count == self._revoked_seen:
            return
        self._revoked_seen = revoked_count
        sessions = list(self.sessions.values())
        if not sessions:
            return
        revoked = await membership.revoked_among(self.db, [s.caller.serial for s in sessions])
        for session, is_revoked in zip(sessions, revoked, strict=True):
            if is_revoked:
                log.warning("worker %s revoked: closing its stream", session.node_id)
                await self.lose(session.node_id)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")

    async def flush_once(self) -> None:
        dirty, self._dirty = list(self._dirty), set()
        for start in range(0, len(dirty), FLUSH_CHUNK):
            chunk = dirty[start : start + FLUSH_CHUNK]
            await registry.flush_heartbeats(self.db, self.sessions, chunk, self._last_wall)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self.flush_once()
            except Exception:
                log.exception("heartbeat flush failed")


def cancel_message(task_id: str, attempt: int) -> pb.PoolMessage:
    return pb.PoolMessage(cancel=pb.CancelTask(task_id=task_id, attempt=attempt))


def _assignment(record: TaskRecord, attempt: int, bundle: bytes) -> pb.Assign:
    return pb.Assign(
        task_id=record.id,
        attempt=attempt,
        image=record.image,
        command=record.command,
        env=record.env,
        resources=record.request.to_proto(),
        timeout_seconds=record.timeout_seconds,
        network=record.network,
        input_bundle=bundle,
    )
