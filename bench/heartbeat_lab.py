"""The processes of the heartbeat benchmark (bench/heartbeats.py): the pool server it
measures, the load generators that play the agents, and the parent's handle on either.

They live apart from the benchmark script because ``multiprocessing`` spawns them: each
child imports its target by module name, and this module is what it needs (the pool, gRPC,
the agents' messages), not the benchmark's reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import multiprocessing
import pstats
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import psutil
import redis
import redis.asyncio as aioredis

from bench.metrics_lab import hub_metrics, listed_peers, simulated_members
from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.core.grpcutil import POOL_CHANNEL_OPTIONS
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.registry import AgentSession
from hivemind_cluster.pool.service import create_server
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import LOOPBACK

INTERVAL = 1.0
JITTER = 0.05
CONNECTS_IN_FLIGHT = 32  # per generator: TLS handshakes at once
Identity = tuple[str, bytes, bytes]  # node id, certificate, key
RedisInfo = tuple[str, int, str]  # host, port, password


def answer_commands(conn: Connection, handle: Callable[[str], Any]) -> asyncio.Event:
    """Answer the parent's commands on ``conn`` from the event loop; set on "stop"."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        command = conn.recv()
        if command == "stop":
            loop.remove_reader(conn.fileno())
            stop.set()
        else:
            conn.send(handle(command))

    loop.add_reader(conn.fileno(), readable)
    return stop


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# ---- the pool process -------------------------------------------------------------------


class CountingPool(Pool):
    """The pool, counting the heartbeats it handles and timing its Redis flushes."""

    heartbeats = 0
    flush_seconds: list[float]

    def _heartbeat(self, session: AgentSession, heartbeat: pb.Heartbeat) -> None:
        self.heartbeats += 1
        super()._heartbeat(session, heartbeat)

    async def flush_once(self) -> None:
        began = time.perf_counter()
        await super().flush_once()
        self.flush_seconds.append(time.perf_counter() - began)


@dataclass(frozen=True)
class PoolConfig:
    """What the pool process is started with: one picklable value, as a spawn needs."""

    redis_info: RedisInfo
    state_dir: str
    server_pem: bytes
    server_key: bytes
    ca_pem: bytes
    # bench/metrics.py: serve the hub's /metrics for this many simulated members (the
    # benchmark scrapes it from its own process); 0: none.
    metrics_members: int = 0


def serve(conn: Connection, config: PoolConfig, profile: bool) -> None:
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    asyncio.run(_serve(conn, config))
    if profiler is not None:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        conn.send(out.getvalue())


async def _serve(conn: Connection, config: PoolConfig) -> None:
    host, port, password = config.redis_info

    def client(decode: bool) -> aioredis.Redis:
        return aioredis.Redis(host=host, port=port, password=password, decode_responses=decode)

    settings = HubSettings(state_dir=config.state_dir, overlay="127.0.0.0/24")
    blobs = BlobStore.for_hub(
        settings, redis.Redis(host=host, port=port, password=password, decode_responses=True)
    )
    pool = CountingPool(settings, client(True), client(False), blobs)
    pool.flush_seconds = []
    await pool.start()
    server, pool_port = await create_server(
        pool, f"{LOOPBACK}:0", config.server_pem + config.ca_pem, config.server_key, config.ca_pem
    )
    metrics = None
    if config.metrics_members:
        members = simulated_members(config.metrics_members)
        metrics = hub_metrics(
            Path(config.state_dir), lambda: pool, members, listed_peers(members), pool.db
        )
        metrics.start()

    def stats(_command: str) -> dict[str, Any]:
        flushes, pool.flush_seconds = pool.flush_seconds, []
        return {
            "sessions": len(pool.sessions),
            "heartbeats": pool.heartbeats,
            "flushes": flushes,
            "time": time.monotonic(),  # system-wide clock: comparable across processes
            "metrics_port": metrics.port if metrics is not None else 0,
        }

    stop = answer_commands(conn, stats)
    conn.send(pool_port)
    await stop.wait()
    if metrics is not None:
        await asyncio.to_thread(metrics.stop)
    await server.stop(grace=0.5)
    await pool.close()


# ---- the load generators ----------------------------------------------------------------


def generate(conn: Connection, address: str, ca_pem: bytes, identities: list[Identity]) -> None:
    asyncio.run(_generate(conn, address, ca_pem, identities))


async def _generate(
    conn: Connection, address: str, ca_pem: bytes, identities: list[Identity]
) -> None:
    counts = {"connected": 0, "sent": 0, "failed": 0}
    errors: dict[str, int] = {}
    handshakes = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    register = pb.AgentMessage(
        register=pb.Register(
            capacity=pb.Resources(cpu_millis=2000, memory_bytes=4 << 30),
            docker_available=True,
            agent_version="bench",
        )
    )
    beat = pb.AgentMessage(
        heartbeat=pb.Heartbeat(cpu_percent=12.5, memory_used_bytes=1 << 30, running_tasks=0)
    )
    options = [*POOL_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]

    async def agent(node_id: str, cert: bytes, key: bytes) -> None:
        credentials = grpc.ssl_channel_credentials(ca_pem, key, cert)
        try:
            async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
                async with handshakes:
                    call = pb_grpc.PoolStub(channel).Connect()
                    await call.write(register)
                    first = await call.read()
                    if not isinstance(first, pb.PoolMessage) or not first.HasField("registered"):
                        raise ConnectionError(f"{node_id}: not registered")
                counts["connected"] += 1
                due = time.monotonic() + random.uniform(0, INTERVAL)
                while True:
                    due += INTERVAL
                    await asyncio.sleep(
                        max(0.0, due + random.uniform(-JITTER, JITTER) - time.monotonic())
                    )
                    await call.write(beat)
                    counts["sent"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            counts["failed"] += 1
            name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            errors[name] = errors.get(name, 0) + 1

    stop = answer_commands(conn, lambda _command: {**counts, "errors": dict(errors)})
    agents = [asyncio.create_task(agent(*identity)) for identity in identities]
    await stop.wait()
    for task in agents:
        task.cancel()
    await asyncio.gather(*agents, return_exceptions=True)


# ---- the parent's handle ----------------------------------------------------------------


class Child:
    """A spawned process and its command pipe."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=target, args=(child_end, *args), daemon=True)
        self.process.start()
        child_end.close()
        assert self.process.pid is not None
        self.ps = psutil.Process(self.process.pid)

    def ask(self, timeout: float = 30) -> Any:
        self.conn.send("stats")
        return self.receive(timeout)

    def receive(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError("the child process did not answer")
        return self.conn.recv()

    def cpu(self) -> float:
        return cpu_seconds(self.ps)

    def stop(self, timeout: float = 20) -> Any:
        """Ask it to stop; returns what it sends last (a profile), if anything."""
        last = None
        with contextlib.suppress(OSError, EOFError):
            self.conn.send("stop")
            if self.conn.poll(timeout):
                last = self.conn.recv()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        return last
