"""The processes of the throughput benchmark (bench/throughput.py) besides the pool server,
which is bench/heartbeat_lab.py's ``serve``: the no-op agents, the submitter that plays a
user of ``hivemind-pool submit`` and ``wait``; and the same no-op tasks on each peer (Ray,
Dask, Celery with its worker process).

They live apart from the benchmark script because ``multiprocessing`` spawns them (each
child imports its target by module name) and the Celery worker is started from here. The
peers are imported inside their functions: they are the optional extra ``bench``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from bench.heartbeat_lab import CONNECTS_IN_FLIGHT, INTERVAL, Identity, answer_commands
from bench.scheduling import AGENT_CAPACITY
from hivemind_cluster.agent.agentmessages import Stream, registration_answer
from hivemind_cluster.client import channel as client_channel
from hivemind_cluster.client.poolcli import POLL_SECONDS
from hivemind_cluster.client.taskclient import CALL_TIMEOUT
from hivemind_cluster.core.grpcutil import POOL_CHANNEL_OPTIONS
from hivemind_cluster.core.system import stop_process
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.model.submission import from_json
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.scratch import scratch_redis

# What `hivemind-pool submit --image hivemind/busybox:latest --cpu 1 --memory 256M -- true`
# sends (client/poolcli.py submit_body, read by the API's own from_json).
TASK_BODY = {"image": "hivemind/busybox:latest", "cpu": "1", "memory": "256M", "command": ["true"]}
FIRST_POLL = 0.002  # the submitter's first Get after a Submit; doubled up to POLL_SECONDS
SETTLE_WAIT = 15.0  # at most, for the last task of a phase to be settled (paid out)
IMAGE_DIGEST = "sha256:" + "0" * 64
WARMUP = 100  # tasks before each measured phase, on HiveMind and on each peer
ROOT = Path(__file__).resolve().parent.parent
CELERY_URL = "HIVEMIND_BENCH_CELERY_URL"  # the Celery worker's broker and result backend
CELERY_TASK = "hivemind_bench.noop"


# ---- the no-op agents -------------------------------------------------------------------


def run_agents(conn: Connection, address: str, ca_pem: bytes, identities: list[Identity]) -> None:
    asyncio.run(_agents(conn, address, ca_pem, identities))


def noop_result(assign: pb.Assign) -> pb.AgentMessage:
    """What a worker reports for an attempt that ran nothing, at once, and wrote no output."""
    return pb.AgentMessage(
        result=pb.TaskResult(
            task_id=assign.task_id,
            attempt=assign.attempt,
            status="succeeded",
            exit_code=0,
            usage=pb.Usage(),
            image_digest=IMAGE_DIGEST,
            log_bytes=0,
        )
    )


async def _agents(
    conn: Connection, address: str, ca_pem: bytes, identities: list[Identity]
) -> None:
    counts = dict.fromkeys(("connected", "assigned", "accepted", "rejected", "failed"), 0)
    sent = dict.fromkeys(("started", "result", "heartbeat"), 0)
    errors: dict[str, int] = {}
    handshakes = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    register = pb.AgentMessage(
        register=pb.Register(capacity=AGENT_CAPACITY, docker_available=True, agent_version="bench")
    )
    beat = pb.AgentMessage(heartbeat=pb.Heartbeat(cpu_percent=5.0, memory_used_bytes=1 << 30))
    options = [*POOL_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]

    async def write(call: Stream, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
        """agent/worker.py's writer: a heartbeat when nothing was sent for a second, and
        one after any other message when nothing else waits."""
        while True:
            try:
                message = await asyncio.wait_for(outbox.get(), INTERVAL)
            except TimeoutError:
                message = beat
            kind = message.WhichOneof("kind") or ""
            await call.write(message)
            sent[kind] += 1
            if kind != "heartbeat" and outbox.empty():
                await call.write(beat)
                sent["heartbeat"] += 1

    async def execute(assign: pb.Assign, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
        """A no-op executor, run in a thread as a worker runs its executor."""
        outbox.put_nowait(pb.AgentMessage(started=pb.TaskStarted(**_attempt(assign))))
        await asyncio.to_thread(time.sleep, 0)
        outbox.put_nowait(noop_result(assign))

    async def agent(_node_id: str, cert: bytes, key: bytes) -> None:
        credentials = grpc.ssl_channel_credentials(ca_pem, key, cert)
        outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
        jobs: set[asyncio.Task[None]] = set()
        try:
            async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
                async with handshakes:
                    call = pb_grpc.PoolStub(channel).Connect()
                    await call.write(register)
                    await registration_answer(call)
                counts["connected"] += 1
                writer = asyncio.create_task(write(call, outbox))
                try:
                    while isinstance(message := await call.read(), pb.PoolMessage):
                        kind = message.WhichOneof("kind") or ""
                        if kind == "assign":
                            counts["assigned"] += 1
                            job = asyncio.create_task(execute(message.assign, outbox))
                            jobs.add(job)
                            job.add_done_callback(jobs.discard)
                        elif kind in counts:  # accepted, rejected
                            counts[kind] += 1
                finally:
                    writer.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent is gone: counted, and named
            counts["failed"] += 1
            name = error_name(exc)
            errors[name] = errors.get(name, 0) + 1

    def stats(_command: str) -> dict[str, Any]:
        return {**counts, **{f"sent_{kind}": n for kind, n in sent.items()}, "errors": errors}

    stop = answer_commands(conn, stats)
    agents = [asyncio.create_task(agent(*identity)) for identity in identities]
    await stop.wait()
    for task in agents:
        task.cancel()
    await asyncio.gather(*agents, return_exceptions=True)


def error_name(exc: Exception) -> str:
    return exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__


def _attempt(assign: pb.Assign) -> dict[str, Any]:
    return {"task_id": assign.task_id, "attempt": assign.attempt}


# ---- the submitter ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One phase of submissions: ``tasks`` tasks, at most ``in_flight`` not yet seen ended,
    at ``rate`` submissions a second (0: as fast as the slots free up)."""

    tasks: int
    in_flight: int
    rate: float = 0.0


@dataclass
class Phase:
    """What the submitter saw of one phase; times are ``time.time()`` (the pool's clock)."""

    submitted: list[float] = field(default_factory=list)  # as each Submit was called
    seen: list[float] = field(default_factory=list)  # as its Get first showed it ended
    ended: list[float] = field(default_factory=list)  # the pool's ended_at
    statuses: dict[str, int] = field(default_factory=dict)
    gets: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    settle_seconds: float = 0.0


def submit_tasks(conn: Connection, identity: client_channel.Identity) -> None:
    """Answers each ``Plan`` sent on ``conn`` with its ``Phase``, until "stop"."""
    asyncio.run(_submitter(conn, identity))


async def _submitter(conn: Connection, identity: client_channel.Identity) -> None:
    async with client_channel.aio_channel(identity) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.TasksStub(channel)
        conn.send("ready")
        while isinstance(plan := await asyncio.to_thread(conn.recv), Plan):
            phase = await run_plan(stub, plan)
            conn.send(phase)


async def run_plan(stub: pb_grpc.TasksAsyncStub, plan: Plan) -> Phase:
    phase = Phase()
    slots = asyncio.Semaphore(plan.in_flight)
    request = from_json(TASK_BODY)
    last: list[str] = []

    async def one() -> None:
        try:
            began = time.time()
            task = await stub.Submit(request, timeout=CALL_TIMEOUT)
            ended = await wait_for(stub, task.id, phase)
            phase.submitted.append(began)
            phase.seen.append(time.time())
            phase.ended.append(ended.ended_at)
            phase.statuses[ended.status] = phase.statuses.get(ended.status, 0) + 1
            last[:] = [task.id]
        except grpc.aio.AioRpcError as exc:
            phase.errors[exc.code().name] = phase.errors.get(exc.code().name, 0) + 1
        finally:
            slots.release()

    jobs: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for index in range(plan.tasks):
        if plan.rate and (delay := start + index / plan.rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        job = asyncio.create_task(one())
        jobs.add(job)
        job.add_done_callback(jobs.discard)
    if jobs:
        await asyncio.gather(*jobs)
    if last:
        phase.settle_seconds = await settled(stub, last[0])
    return phase


async def wait_for(stub: pb_grpc.TasksAsyncStub, task_id: str, phase: Phase) -> pb.Task:
    """client/poolcli.py's ``wait_for``: Get until the task has ended, every POLL_SECONDS,
    but starting at FIRST_POLL and doubling (the command's fixed 0.25 s would hold every
    slot for a quarter of a second)."""
    pause = FIRST_POLL
    while True:
        await asyncio.sleep(pause)
        task = await stub.Get(pb.TaskRef(task_id=task_id), timeout=CALL_TIMEOUT)
        phase.gets += 1
        if task.status in FINAL_STATES:
            return task
        pause = min(POLL_SECONDS, pause * 2)


async def settled(stub: pb_grpc.TasksAsyncStub, task_id: str) -> float:
    """Seconds until the task (the last of a phase to end) is settled, its escrow paid out:
    the pool's CPU for a phase is read after that."""
    began = time.perf_counter()
    while time.perf_counter() - began < SETTLE_WAIT:
        if (await stub.Get(pb.TaskRef(task_id=task_id), timeout=CALL_TIMEOUT)).settled:
            break
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


# ---- the peers --------------------------------------------------------------------------


def peer(module: str) -> Any:
    """A peer's module, untyped whether it is installed or not (the extra is optional)."""
    return importlib.import_module(module)


Submit = Callable[[int], list[Any]]  # submits that many no-op tasks: their handles


def timed(tasks: int, submit: Submit, wait: Callable[[list[Any]], object]) -> float:
    """Tasks/s: a warm-up, then ``tasks`` submitted at once and every result waited for."""
    wait(submit(WARMUP))
    began = time.perf_counter()
    wait(submit(tasks))
    return tasks / (time.perf_counter() - began)


def noop(*_args: object) -> None:
    """The peers' task: nothing."""


def ray_rate(tasks: int, workdir: Path) -> tuple[str, float]:
    ray = peer("ray")

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        _temp_dir=str(workdir / "ray"),  # its sessions' files: not left in /tmp/ray
    )
    try:

        def nothing() -> None:  # nested: pickled by value, the workers import nothing
            return None

        remote = ray.remote(nothing)

        def submit(count: int) -> list[Any]:
            return [remote.remote() for _ in range(count)]

        return f"Ray {ray.__version__} (num_cpus=2)", timed(tasks, submit, ray.get)
    finally:
        ray.shutdown()


def dask_rate(tasks: int, workdir: Path) -> tuple[str, float]:
    dask, distributed = peer("dask"), peer("dask.distributed")

    # Its scheduler's and workers' scratch space: in the work directory, not left in /tmp.
    with dask.config.set({"temporary-directory": str(workdir / "dask")}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with cluster, distributed.Client(cluster) as client:

        def nothing(_index: int) -> None:
            return None

        def submit(count: int) -> list[Any]:
            return list(client.map(nothing, range(count), pure=False))

        name = f"Dask {dask.__version__} (LocalCluster, 2 workers of 1 thread)"
        return name, timed(tasks, submit, client.gather)


def celery_rate(tasks: int, workdir: Path) -> tuple[str, float]:
    """On a redis-server of its own (a free loopback port), a worker of 2 processes."""
    celery = peer("celery")

    with (
        scratch_redis(workdir / f"celery-{time.monotonic_ns()}") as broker,
        open(broker.data_dir / "worker.log", "wb") as log,
    ):
        url = f"redis://:{broker.password}@{broker.bind}:{broker.port}/0"
        app = celery_app(url)
        worker = subprocess.Popen(
            [sys.executable, "-c", "from bench.throughput_lab import celery_worker as w; w()"],
            env={**os.environ, CELERY_URL: url, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            task = app.tasks[CELERY_TASK]

            def submit(count: int) -> list[Any]:
                return [task.delay() for _ in range(count)]

            def wait(results: list[Any]) -> None:
                for result in results:
                    result.get(timeout=120)

            name = f"Celery {celery.__version__} (Redis broker and results, 2 processes)"
            return name, timed(tasks, submit, wait)
        finally:
            stop_process(worker, 30)
            app.close()


def celery_app(url: str) -> Any:
    """A Celery app on the Redis at ``url`` (broker and results) with the no-op task."""
    app = peer("celery").Celery("hivemind_bench", broker=url, backend=url)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    app.task(name=CELERY_TASK)(noop)
    return app


def celery_worker() -> None:
    """The Celery worker process: 2 prefork processes, its broker's URL in the environment."""
    celery_app(os.environ[CELERY_URL]).worker_main(
        [
            "worker",
            "--concurrency=2",
            "--pool=prefork",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
