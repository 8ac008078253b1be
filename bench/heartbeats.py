"""Heartbeat benchmark: how many agents, each beating at 1 Hz, the pool serves on < 1 core.

    python bench/heartbeats.py [--agents 1000 2500 5000 7500] [--window 15] [--repeat 1]
                               [--generators 2] [--profile] [--json]

Goal: at least 5,000 agents at 1 Hz on less than one core of the pool process.

Method. A real redis-server (127.0.0.1, free port, temp dir) and, per step, a fresh pool
server in a child process: ``Pool`` plus ``create_server`` (gRPC with mutual TLS on
127.0.0.1, exactly as tests/support/poolkit.py's ``Cluster`` and the hub run it, heartbeat timeout
10 s). Every simulated agent is a member recorded in Redis as enrollment would record it,
with its own client certificate (node id in the URI SAN, 127.0.0.1 bound): the pool keys
sessions by node id, so agents cannot share one. Because the identity is per TLS
connection, each agent has its own channel (connection) and one ``Connect`` stream on it:
``Register``, then a ``Heartbeat`` every second (random phase, +-50 ms jitter, no drift).
The agents are spread over ``--generators`` load-generator processes (grpc.aio).

Once all agents are connected and 3 s have passed, a ``--window``-second window is
measured: the CPU seconds of the pool process (all threads; psutil) over wall seconds =
cores used, the heartbeats the pool handled (counted by a ``Pool`` subclass) against the
heartbeats the generators sent and against agents x window, the time the once-a-second
Redis flush takes, and afterwards whether every agent's ``last_heartbeat`` in Redis is
fresh (under 3 s old). A step "sustains" its agents when all stay connected, the pool
handled >= 98% of agents x window heartbeats, fewer than one second's worth of sent beats
are still unhandled at the end (backlog), every Redis record is fresh and the pool used
< 1 core. Handled can exceed 100% of expected when the pool is still working off beats
queued while thousands of agents were connecting (a backlog from before the window).
With ``--repeat R`` each step runs R times (fresh pool each) and the run with the median
pool CPU is reported.

Caveat: on a small machine the generators and redis-server compete with the pool for the
same cores; their CPU is printed too. If the generators cannot keep 1 Hz the pool is under
less load than the step's name says: check "sent" against the expected count.
``--profile`` runs the pool process of each step under cProfile (slower) and prints its
top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import multiprocessing
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import psutil
import redis
import redis.asyncio as aioredis

from hivemind_cluster.core.grpcutil import POOL_CHANNEL_OPTIONS
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants as mesh_keys
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.registry import AgentSession
from hivemind_cluster.pool.service import create_server
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import LOOPBACK, node_record
from tests.support.scratch import connect_with_every_library, scratch_redis

GOAL_AGENTS = 5000
INTERVAL = 1.0
JITTER = 0.05
WARMUP = 3.0
FRESH_SECONDS = 3.0
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


def serve(
    conn: Connection,
    redis_info: RedisInfo,
    state_dir: str,
    server_pem: bytes,
    server_key: bytes,
    ca_pem: bytes,
    profile: bool,
) -> None:
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    asyncio.run(_serve(conn, redis_info, state_dir, server_pem, server_key, ca_pem))
    if profiler is not None:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        conn.send(out.getvalue())


async def _serve(
    conn: Connection,
    redis_info: RedisInfo,
    state_dir: str,
    server_pem: bytes,
    server_key: bytes,
    ca_pem: bytes,
) -> None:
    host, port, password = redis_info

    def client(decode: bool) -> aioredis.Redis:
        return aioredis.Redis(host=host, port=port, password=password, decode_responses=decode)

    settings = HubSettings(state_dir=state_dir, overlay="127.0.0.0/24")
    pool = CountingPool(settings, client(True), client(False), Path(state_dir) / "tasks")
    pool.flush_seconds = []
    await pool.start()
    server, pool_port = await create_server(
        pool, f"{LOOPBACK}:0", server_pem + ca_pem, server_key, ca_pem
    )

    def stats(_command: str) -> dict[str, Any]:
        flushes, pool.flush_seconds = pool.flush_seconds, []
        return {
            "sessions": len(pool.sessions),
            "heartbeats": pool.heartbeats,
            "flushes": flushes,
            "time": time.monotonic(),  # system-wide clock: comparable across processes
        }

    stop = answer_commands(conn, stats)
    conn.send(pool_port)
    await stop.wait()
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


# ---- the parent ------------------------------------------------------------------------


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
        times = self.ps.cpu_times()
        return float(times.user + times.system)

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


def record_nodes(db: redis.Redis, identities: list[Identity]) -> None:
    """Members as enrollment records them (``tests.support.poolkit.node_record``)."""
    db.flushall()
    now = time.time()
    pipe = db.pipeline(transaction=False)
    for node_id, _cert, _key in identities:
        pipe.hset(
            mesh_keys.NODE.format(id=node_id), mapping=node_record(node_id, "worker", LOOPBACK, now)
        )
        pipe.zadd(mesh_keys.NODES, {node_id: now})
    pipe.execute()


def stale_records(db: redis.Redis, identities: list[Identity]) -> int:
    now = time.time()
    live = db.hmget(keys.WORKER_LIVE, [node_id for node_id, _cert, _key in identities])
    beats = [json.loads(state)["last_heartbeat"] if state else 0 for state in live]
    return sum(1 for beat in beats if now - float(beat) > FRESH_SECONDS)


def run_step(
    args: argparse.Namespace,
    redis_server: RedisServer,
    workdir: Path,
    ca: CertificateAuthority,
    server: tuple[bytes, bytes],
    identities: list[Identity],
) -> dict[str, Any]:
    count = len(identities)
    db = connect_with_every_library(redis_server)  # the pool below is built without its Lua
    record_nodes(db, identities)
    assert redis_server.process is not None
    redis_ps = psutil.Process(redis_server.process.pid)
    redis_info = (redis_server.bind, redis_server.port, redis_server.password)
    state_dir = workdir / f"pool-{count}"
    pool = Child(serve, redis_info, str(state_dir), *server, ca.pem, args.profile)
    generators: list[Child] = []
    profile = None
    try:
        address = f"{LOOPBACK}:{pool.receive(60)}"
        share = [identities[i :: args.generators] for i in range(args.generators)]
        began = time.monotonic()
        generators = [Child(generate, address, ca.pem, part) for part in share if part]
        deadline = began + 60 + count / 50
        while (sessions := pool.ask()["sessions"]) < count:
            failed = sum(g.ask()["failed"] for g in generators)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        connect_seconds = time.monotonic() - began
        time.sleep(WARMUP)
        pool.ask()  # drops the flush timings of the warm-up
        before = pool.ask()
        sent_before = sum(g.ask()["sent"] for g in generators)
        cpu_before = (pool.cpu(), sum(g.cpu() for g in generators), redis_cpu(redis_ps))
        wall_began = time.monotonic()
        time.sleep(args.window)
        wall = time.monotonic() - wall_began
        cpu_after = (pool.cpu(), sum(g.cpu() for g in generators), redis_cpu(redis_ps))
        after = pool.ask()
        generated = [g.ask() for g in generators]
        stale = stale_records(db, identities)
    finally:
        for generator in generators:
            generator.stop()
        profile = pool.stop()
        db.close()
    handled = after["heartbeats"] - before["heartbeats"]
    sent = sum(g["sent"] for g in generated) - sent_before
    expected = count * (after["time"] - before["time"]) / INTERVAL
    cores = (cpu_after[0] - cpu_before[0]) / wall
    flushes = after["flushes"]
    errors: dict[str, int] = {}
    for g in generated:
        for name, n in g["errors"].items():
            errors[name] = errors.get(name, 0) + n
    result = {
        "agents": count,
        "connected": sessions,
        "connected_at_end": after["sessions"],
        "connect_seconds": connect_seconds,
        "window_seconds": wall,
        "pool_cores": cores,
        "generator_cores": (cpu_after[1] - cpu_before[1]) / wall,
        "redis_cores": (cpu_after[2] - cpu_before[2]) / wall,
        "heartbeats_expected": expected,
        "heartbeats_sent": sent,
        "heartbeats_handled": handled,
        "handled_share": handled / expected if expected else 0.0,
        "flush_ms_median": statistics.median(flushes) * 1000 if flushes else 0.0,
        "flush_ms_max": max(flushes) * 1000 if flushes else 0.0,
        "stale_records": stale,
        "stream_errors": errors,
    }
    # Sent since the start but not yet handled: queued in gRPC buffers, at most about the
    # beats in flight (the generators are asked just after the pool, so it errs high).
    result["backlog_at_end"] = sum(g["sent"] for g in generated) - after["heartbeats"]
    result["sustained"] = (
        after["sessions"] == count
        and handled >= 0.98 * expected
        and result["backlog_at_end"] < count
        and stale == 0
        and cores < 1.0
    )
    if isinstance(profile, str):
        result["profile"] = profile
    return result


def median_step(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median pool CPU, with every run's pool cores beside it."""
    ordered = sorted(runs, key=lambda run: run["pool_cores"])
    step = dict(ordered[(len(ordered) - 1) // 2])
    step["pool_cores_runs"] = [run["pool_cores"] for run in runs]
    step["sustained_runs"] = [run["sustained"] for run in runs]
    return step


def redis_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def issue(ca: CertificateAuthority, count: int) -> list[Identity]:
    identities = []
    for index in range(count):
        node_id = f"sim{index:05d}"
        cert, key = ca.issue_client_certificate(node_id, LOOPBACK)
        identities.append((node_id, cert, key))
    return identities


def runs_note(step: dict[str, Any]) -> str:
    if len(step["pool_cores_runs"]) < 2:
        return ""
    return f" (median of {', '.join(f'{c:.2f}' for c in step['pool_cores_runs'])})"


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"heartbeats: simulated agents at 1 Hz over mTLS gRPC, one connection each, "
        f"{report['window_seconds']:g} s windows, {report['generators']} generator processes, "
        f"{report['cpus']} CPUs on this machine (shared by pool, generators and redis-server)",
    ]
    for step in report["steps"]:
        errors = ", ".join(f"{n} {name}" for name, n in step["stream_errors"].items())
        lines.append(
            f"  {step['agents']:>6,} agents: pool {step['pool_cores']:.2f} cores{runs_note(step)}, "
            f"handled {step['heartbeats_handled']:,} of {step['heartbeats_expected']:,.0f} "
            f"expected ({step['handled_share']:.1%}; generators sent "
            f"{step['heartbeats_sent']:,}; backlog at end {step['backlog_at_end']:,}), "
            f"connected {step['connected_at_end']:,} "
            f"(all in {step['connect_seconds']:.1f} s), flush median "
            f"{step['flush_ms_median']:.0f} ms / max {step['flush_ms_max']:.0f} ms, "
            f"stale Redis records {step['stale_records']}; generators "
            f"{step['generator_cores']:.2f} cores, redis-server {step['redis_cores']:.2f} cores"
            f" -> {'sustained' if step['sustained'] else 'NOT sustained'}"
            + (f"; stream errors: {errors}" if errors else "")
        )
    best = report["max_sustained_agents"]
    lines.append(
        f"  most agents sustained on < 1 pool core: {best:,}; goal >= {GOAL_AGENTS:,}: "
        f"{'met' if best >= GOAL_AGENTS else 'NOT met'}"
    )
    for step in report["steps"]:
        if "profile" in step:
            lines.append(f"pool process profile, {step['agents']} agents:\n{step['profile']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 2500, 5000, 7500])
    parser.add_argument("--window", type=float, default=15.0, help="measured seconds per step")
    parser.add_argument("--repeat", type=int, default=1, help="runs per step (median)")
    parser.add_argument("--generators", type=int, default=2, help="load-generator processes")
    parser.add_argument("--profile", action="store_true", help="cProfile the pool process")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="hivemind-bench-") as tmp,
        scratch_redis(Path(tmp) / "redis") as redis_server,
    ):
        workdir = Path(tmp)
        ca = CertificateAuthority.create()
        server = ca.issue_server_certificate([LOOPBACK])
        identities = issue(ca, max(args.agents))
        steps = []
        for count in sorted(args.agents):
            runs = [
                run_step(args, redis_server, workdir, ca, server, identities[:count])
                for _ in range(args.repeat)
            ]
            steps.append(median_step(runs))
    sustained = [s["agents"] for s in steps if s["sustained"]]
    report = {
        "benchmark": "heartbeats",
        "goal_agents": GOAL_AGENTS,
        "window_seconds": args.window,
        "generators": args.generators,
        "cpus": psutil.cpu_count(),
        "steps": steps,
        "max_sustained_agents": max(sustained, default=0),
    }
    report["goal_met"] = report["max_sustained_agents"] >= GOAL_AGENTS
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
