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
The agents are spread over ``--generators`` load-generator processes (grpc.aio). Both
kinds of child process are in bench/heartbeat_lab.py.

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
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import redis

from bench.heartbeat_lab import INTERVAL, Child, Identity, PoolConfig, cpu_seconds, generate, serve
from bench.metrics_lab import Scraper
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants as mesh_keys
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.pool import constants as keys
from tests.support.poolkit import LOOPBACK, node_record
from tests.support.scratch import connect_with_every_library, scratch_dir_with_redis

GOAL_AGENTS = 5000
WARMUP = 3.0
FRESH_SECONDS = 3.0


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


@dataclass
class Connecting:
    """How the agents of a step came up: the pool's sessions when the wait ended, and when."""

    sessions: int
    seconds: float


@dataclass
class Window:
    """What the children reported over one measured window."""

    before: dict[str, Any]  # the pool's stats as the window began
    after: dict[str, Any]  # ... and as it ended
    sent_before: int  # heartbeats the generators had sent as it began
    generated: list[dict[str, Any]]  # each generator's counts as it ended
    cores: tuple[float, ...]  # used over the window: pool, generators, redis-server
    wall: float


def wait_for_sessions(pool: Child, generators: list[Child], count: int, began: float) -> int:
    """Until the pool has every agent's session, an agent failed or time ran out."""
    deadline = began + 60 + count / 50
    sessions: int = pool.ask()["sessions"]
    while sessions < count:
        failed = sum(g.ask()["failed"] for g in generators)
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
        sessions = pool.ask()["sessions"]
    return sessions


def measure_window(
    pool: Child, generators: list[Child], redis_ps: psutil.Process, seconds: float
) -> Window:
    def cpu_now() -> tuple[float, float, float]:
        return (pool.cpu(), sum(g.cpu() for g in generators), cpu_seconds(redis_ps))

    pool.ask()  # drops the flush timings of the warm-up
    before = pool.ask()
    sent_before = sum(g.ask()["sent"] for g in generators)
    cpu_before = cpu_now()
    wall_began = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - wall_began
    cpu_after = cpu_now()
    after = pool.ask()
    generated = [g.ask() for g in generators]
    cores = tuple((end - start) / wall for start, end in zip(cpu_before, cpu_after, strict=True))
    return Window(before, after, sent_before, generated, cores, wall)


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
    members = count if getattr(args, "metrics", False) else 0  # bench/metrics.py: served
    config = PoolConfig(redis_info, str(workdir / f"pool-{count}"), *server, ca.pem, members)
    pool = Child(serve, config, args.profile)
    generators: list[Child] = []
    try:
        address = f"{LOOPBACK}:{pool.receive(60)}"
        share = [identities[i :: args.generators] for i in range(args.generators)]
        began = time.monotonic()
        generators = [Child(generate, address, ca.pem, part) for part in share if part]
        sessions = wait_for_sessions(pool, generators, count, began)
        connecting = Connecting(sessions, time.monotonic() - began)
        time.sleep(WARMUP)
        with scraped(pool, getattr(args, "scrape_interval", 0)) as scrapes:
            window = measure_window(pool, generators, redis_ps, args.window)
        stale = stale_records(db, identities)
    finally:
        for generator in generators:
            generator.stop()
        profile = pool.stop()
        db.close()
    result = step_result(count, connecting, window, stale)
    if scrapes:
        result["scrapes"] = scrapes
    if isinstance(profile, str):
        result["profile"] = profile
    return result


@contextlib.contextmanager
def scraped(pool: Child, interval: float) -> Iterator[dict[str, Any]]:
    """bench/metrics.py: the pool's /metrics scraped from here every ``interval`` s."""
    port = pool.ask()["metrics_port"] if interval else 0
    if not port:
        yield {}
        return
    scraper = Scraper(port, interval).start()
    found: dict[str, Any] = {}
    try:
        yield found
    finally:
        found.update(scraper.stop())


def step_result(count: int, connecting: Connecting, window: Window, stale: int) -> dict[str, Any]:
    """A step's figures, and whether it sustained its agents (see the module's docstring)."""
    before, after, generated = window.before, window.after, window.generated
    handled = after["heartbeats"] - before["heartbeats"]
    sent = sum(g["sent"] for g in generated) - window.sent_before
    expected = count * (after["time"] - before["time"]) / INTERVAL
    cores = window.cores[0]
    flushes = after["flushes"]
    errors: dict[str, int] = {}
    for g in generated:
        for name, n in g["errors"].items():
            errors[name] = errors.get(name, 0) + n
    result = {
        "agents": count,
        "connected": connecting.sessions,
        "connected_at_end": after["sessions"],
        "connect_seconds": connecting.seconds,
        "window_seconds": window.wall,
        "pool_cores": cores,
        "generator_cores": window.cores[1],
        "redis_cores": window.cores[2],
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
    return result


def median_step(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median pool CPU, with every run's pool cores beside it."""
    ordered = sorted(runs, key=lambda run: run["pool_cores"])
    step = dict(ordered[(len(ordered) - 1) // 2])
    step["pool_cores_runs"] = [run["pool_cores"] for run in runs]
    step["sustained_runs"] = [run["sustained"] for run in runs]
    return step


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
    with scratch_dir_with_redis("hivemind-bench-") as (workdir, redis_server):
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
