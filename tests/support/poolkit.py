"""A pool on loopback for integration tests and benchmarks: real Redis, real mTLS gRPC.

Every caller connects from 127.0.0.1, so every certificate here binds 127.0.0.1 (the
hub's too: the overlay is 127.0.0.0/24, whose first address is the hub's). ``Cluster``
registers nodes in Redis the way enrollment does, issues their certificates, and runs
``Worker``s with a scriptable in-process executor; ``@in_a_cluster()`` makes an
``async def test_…(cluster)`` run on a fresh one. Task data goes through the pool's blob
store, under the state directory: ``upload`` puts an input there as a client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import redis
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.taskrun import NO_USAGE, OnOutput, Outcome, TaskRun, Usage
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.client.channel import Identity, aio_channel
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants as mesh_keys
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.model.blobs import CHUNK_BYTES, DIGEST_PREFIX
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.spec import TaskSpec
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.registry import AgentSession
from hivemind_cluster.pool.service import create_server
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.scratch import connect_with_every_library

LOOPBACK = "127.0.0.1"
GiB = 1 << 30
# A checked task of 1 CPU, 256 MiB, 60 s, for tests that drive the task store directly.
BUSYBOX_SPEC = TaskSpec(
    owner="op",
    name="",
    image="hivemind/busybox:latest",
    command=["x"],
    env={},
    request=Resources(1000, 1 << 28, 0),
    timeout_seconds=60,
    priority=0,
    max_attempts=2,
    network=False,
)
TWO_CPUS = Resources(2000, 4 * GiB, 0)


Behaviour = Callable[[TaskRun, OnOutput, threading.Event], Outcome]


@dataclass
class ScriptedExecutor:
    """Runs nothing: ``behaviour(task, on_output, cancel)`` decides the outcome."""

    behaviour: Behaviour | None = None
    started: list[TaskRun] = field(default_factory=list)

    def run(self, task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        self.started.append(task)
        if self.behaviour is not None:
            return self.behaviour(task, on_output, cancel)
        return Outcome("succeeded", 0, "", NO_USAGE)


def echo(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    """Prints its command to stdout and succeeds with usage."""
    on_output("stdout", (" ".join(task.command) + "\n").encode())
    return Outcome("succeeded", 0, "", Usage(0.5, 1 << 20, 0.6, 0.0))


def block_until_cancelled(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    on_output("stdout", b"working\n")
    cancel.wait(60)
    return Outcome("cancelled", 137, "cancelled", NO_USAGE)


def succeed_after(release: threading.Event, stdout: bytes = b"") -> Behaviour:
    """Holds every task until ``release`` is set (10 s at the most), then prints ``stdout``
    (if any) and succeeds: for tests that need a task still running while they act."""

    def hold(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        release.wait(10)
        if stdout:
            on_output("stdout", stdout)
        return Outcome("succeeded", 0, "", NO_USAGE)

    return hold


def node_record(node_id: str, role: str, overlay_ip: str, now: float) -> dict[FieldT, EncodableT]:
    """A member's record (the ``mesh_keys.NODE`` hash) as enrollment writes it."""
    return {
        "id": node_id,
        "name": f"name-{node_id}",
        "role": role,
        "overlay_ip": overlay_ip,
        "wg_public_key": node_id,
        "state": "active",
        "enrolled_at": now,
    }


def redis_client(server: RedisServer, decode: bool = True) -> aioredis.Redis:
    return aioredis.Redis(
        host=server.bind, port=server.port, password=server.password, decode_responses=decode
    )


async def fresh_pool(
    server: RedisServer, settings: HubSettings, blob_db: redis.Redis | None = None
) -> Pool:
    """A ``Pool`` (not started yet) on a flushed Redis with the Lua libraries loaded, its
    blob store under the settings' state directory (``settings.blob_path``), on ``blob_db``
    (a synchronous client the caller closes; by default one of its own)."""
    db = redis_client(server)
    await db.flushall()
    connect_with_every_library(server).close()  # loads the Lua, as ``Pool.open`` does
    blob_db = blob_db or connect_with_every_library(server)
    return Pool(settings, db, redis_client(server, False), BlobStore.for_hub(settings, blob_db))


def digest_of(data: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


async def collected(chunks: AsyncIterable[pb.BlobChunk]) -> bytes:
    """The data of a blob stream (``ReadResult``, ``Blobs.Read``), all of it."""
    return b"".join([chunk.data async for chunk in chunks])


async def upload(stub: pb_grpc.TasksAsyncStub, data: bytes, account: str = "") -> str:
    """Put ``data`` on the hub as the stub's caller (or, for the hub, ``account``) does
    before naming it in a submission: ``BeginUpload``, then ``Upload`` in chunks from the
    offset the hub holds. Returns its digest."""
    digest = digest_of(data)
    request = pb.UploadRequest(digest=digest, size=len(data), account=account)
    state = await stub.BeginUpload(request)
    if state.complete:
        return digest

    async def chunks() -> AsyncIterator[pb.UploadChunk]:
        for start in range(state.offset, len(data), CHUNK_BYTES):
            piece = data[start : start + CHUNK_BYTES]
            yield pb.UploadChunk(
                upload_id=state.upload_id, offset=start, data=piece, account=account
            )

    sent = await stub.Upload(chunks())
    assert sent.complete and sent.digest == digest, sent
    return digest


# Tests about lost workers pass this as ``heartbeat_timeout``; the others keep the default,
# long enough that a stalled event loop on a loaded machine never loses a worker.
LOSS_TIMEOUT = 3


class Cluster:
    def __init__(self, redis_server: RedisServer, state_dir: Path, **settings: Any) -> None:
        self.redis_server = redis_server
        settings = {"heartbeat_timeout": 30, **settings}
        self.settings = HubSettings(state_dir=str(state_dir), overlay="127.0.0.0/24", **settings)
        self.ca = CertificateAuthority.create()
        self.server_cert, self.server_key = self.ca.issue_server_certificate([LOOPBACK])
        self.pool: Pool | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.workers: dict[str, tuple[Worker, asyncio.Task[None]]] = {}
        self.channels: list[grpc.aio.Channel] = []
        # The blob store's synchronous client: also what its garbage collection asks
        # whether tasks are live with (``tasks_live``), as the hub's does.
        self.blob_db = connect_with_every_library(redis_server)

    async def start(self) -> None:
        self.pool = await fresh_pool(self.redis_server, self.settings, self.blob_db)
        await self.serve()

    async def serve(self, port: int = 0) -> None:
        assert self.pool is not None
        await self.pool.start()
        self.server, self.port = await create_server(
            self.pool,
            f"{LOOPBACK}:{port}",
            self.server_cert + self.ca.pem,
            self.server_key,
            self.ca.pem,
        )

    async def restart_pool(self, while_down: Callable[[], Awaitable[object]] | None = None) -> None:
        """A new pool process, as after a hub restart: same Redis, empty memory, same address
        (workers reconnect to it); ``while_down`` is awaited while no pool is listening."""
        assert self.pool is not None and self.server is not None
        await self.server.stop(grace=0)
        old = self.pool
        await old.stop()
        if while_down is not None:
            await while_down()
        self.pool = Pool(old.settings, old.db, old.raw_db, old.blobs)
        await self.serve(self.port)

    async def stop(self) -> None:
        for worker, task in self.workers.values():
            worker.halt()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self.channels:
            await channel.close()
        if self.server is not None:
            await self.server.stop(grace=0.5)
        if self.pool is not None:
            await self.pool.close()
        self.blob_db.close()

    async def add_node(self, node_id: str, role: str, overlay_ip: str = LOOPBACK) -> Identity:
        """A member as enrollment (``hm_redeem``) would record it, with its certificate and
        key. Its WireGuard key is its id."""
        assert self.pool is not None
        now = time.time()
        record = node_record(node_id, role, overlay_ip, now)
        pipe = self.pool.db.pipeline()
        pipe.hset(mesh_keys.NODE.format(id=node_id), mapping=record)
        pipe.zadd(mesh_keys.NODES, {node_id: now})
        pipe.hset(mesh_keys.NODE_BY_WG_KEY, record["wg_public_key"], node_id)
        await pipe.execute()
        cert, key = self.ca.issue_client_certificate(node_id, overlay_ip)
        return Identity(node_id, cert, key, self.ca.pem, f"{LOOPBACK}:{self.port}")

    async def start_worker(
        self,
        node_id: str,
        executor: Any,
        capacity: Resources = TWO_CPUS,
        drain_seconds: float = 5,
        gpus: tuple[pb.Gpu, ...] = (),
    ) -> Worker:
        identity = await self.add_node(node_id, "worker")
        facts = Facts(capacity, gpus=list(gpus), docker_available=True)
        worker = Worker(identity, executor, facts, drain_seconds)
        self.workers[node_id] = (worker, asyncio.create_task(worker.run()))
        await self.until(lambda: node_id in self.sessions(), f"{node_id} connected")
        return worker

    async def lose_a_worker_mid_task(
        self, stub: pb_grpc.TasksAsyncStub, request: pb.SubmitRequest, survivor: ScriptedExecutor
    ) -> pb.Task:
        """Submits ``request``; its first attempt starts on a worker "doomed", which is then
        killed, and a worker "survivor" (running ``survivor``) joins. Returns the task."""
        doomed = ScriptedExecutor(block_until_cancelled)
        await self.start_worker("doomed", doomed)
        task = await stub.Submit(request)
        await self.until(lambda: len(doomed.started) == 1, "started on doomed")
        await self.kill_worker("doomed")
        await self.start_worker("survivor", survivor)
        return task

    async def kill_worker(self, node_id: str) -> None:
        """As SIGKILL would: the stream just stops, no result, no goodbye."""
        _, task = self.workers.pop(node_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def sessions(self) -> Mapping[str, AgentSession]:
        assert self.pool is not None
        return self.pool.sessions

    async def tasks_stub(self, identity: Identity) -> pb_grpc.TasksAsyncStub:
        """The tasks API as ``identity``, on a channel of its own that ``stop()`` closes."""
        channel = aio_channel(identity)
        self.channels.append(channel)
        return pb_grpc.TasksStub(channel)

    async def operator_stub(self, node_id: str = "op") -> pb_grpc.TasksAsyncStub:
        """The tasks API as a new operator node ``node_id``."""
        return await self.tasks_stub(await self.add_node(node_id, "operator"))

    async def wait_status(
        self, stub: pb_grpc.TasksAsyncStub, task_id: str, statuses: set[str], timeout: float = 15
    ) -> pb.Task:
        deadline = time.monotonic() + timeout
        while True:
            task = await stub.Get(pb.TaskRef(task_id=task_id))
            if task.status in statuses:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} stayed {task.status}, wanted {statuses}")
            await asyncio.sleep(0.05)

    async def wait_settled(
        self, stub: pb_grpc.TasksAsyncStub, task_id: str, timeout: float = 10
    ) -> pb.Task:
        """The task once its settlement (payment and refund) is done: that is asynchronous."""
        deadline = time.monotonic() + timeout
        while not (task := await stub.Get(pb.TaskRef(task_id=task_id))).settled:
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} was not settled")
            await asyncio.sleep(0.05)
        return task

    @staticmethod
    async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


ClusterBody = Callable[[Cluster], Awaitable[None]]


def run_in_cluster(redis_server: RedisServer, tmp_path: Path, body: ClusterBody, **kw: Any) -> None:
    """``body(cluster)`` on a started ``Cluster``, stopped afterwards whatever happens."""

    async def main() -> None:
        cluster = Cluster(redis_server, tmp_path, **kw)
        await cluster.start()
        try:
            await body(cluster)
        finally:
            await cluster.stop()

    asyncio.run(main())


BodyT = TypeVar("BodyT", bound=Callable[..., Awaitable[None]])
FixtureTest = Callable[[RedisServer, Path], None]


def pytest_decorator(
    run: Callable[[RedisServer, Path, BodyT], None],
) -> Callable[[BodyT], FixtureTest]:
    """A decorator that makes ``async def test_…(world)`` a test pytest runs: its
    ``redis_server`` and ``tmp_path`` fixtures go to ``run``, with the body. The test is a
    plain function of those two, not a ``functools.wraps`` copy: pytest would follow
    ``__wrapped__`` and ask for the body's argument as a fixture."""

    def decorate(body: BodyT) -> FixtureTest:
        def test(redis_server: RedisServer, tmp_path: Path) -> None:
            run(redis_server, tmp_path, body)

        test.__name__ = test.__qualname__ = body.__name__
        test.__module__, test.__doc__ = body.__module__, body.__doc__
        return test

    return decorate


def in_a_cluster(**settings: Any) -> Callable[[ClusterBody], FixtureTest]:
    """``@in_a_cluster(**settings)`` over ``async def test_…(cluster)``: the test, run on a
    started ``Cluster`` with these hub settings (``run_in_cluster``)."""

    def run(redis_server: RedisServer, tmp_path: Path, body: ClusterBody) -> None:
        run_in_cluster(redis_server, tmp_path, body, **settings)

    return pytest_decorator(run)
