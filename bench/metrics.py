"""Metrics benchmark: what serving the hub's /metrics costs, and one scrape's time.

    python bench/metrics.py [--runs 3] [--agents 100] [--tasks 6000]
                            [--heartbeat-agents 2500] [--window 30]
                            [--scrape-interval 15] [--stress-interval 1]
                            [--scrape-agents 5000] [--scrapes 20] [--json]

Goals: scheduling throughput and heartbeat capacity with metrics on within 5% of off
(on >= 0.95 x off); one /metrics scrape of the hub with 5,000 simulated agents < 100 ms.

Method, all in one run, the modes in an order that changes every run, ``--runs`` times
each, medians:

* Scheduling: bench/scheduling.py's throughput run (a real Pool on a real redis-server,
  ``--agents`` simulated agents, ``--tasks`` tasks, a few seconds a run). "On" serves the
  hub's /metrics (hub/metrics.py: the real ``HubMetrics`` and ``HubCollector`` in the pool's
  process, its event loop hopped to for every scrape) and scrapes it every
  ``--stress-interval`` seconds meanwhile (1 s: a run at Prometheus' default of 15 s would
  see no scrape at all). Figure: placements per second.
* Heartbeats: bench/heartbeats.py's step at ``--heartbeat-agents`` agents beating at 1 Hz
  over real mTLS gRPC streams, a ``--window``-second window. "On" serves /metrics for that
  many members from the pool process, scraped from this process every
  ``--scrape-interval`` seconds (15: Prometheus' default); "stressed" every
  ``--stress-interval`` seconds. Figure: the pool process's CPU per 1,000 heartbeats
  handled (capacity is inversely proportional to it: the pool sustains agents while it
  stays under one core). The goal is judged on "on"; "stressed" shows what one scrape
  costs under load.
* Scrape: a real Pool with ``--scrape-agents`` connected simulated agents (sessions with
  heartbeats), a distributor with as many members, and a real WireGuard interface
  (wireguard-go) with one peer per agent, so the scrape runs a real ``wg show dump`` of
  that many peers. ``--scrapes`` sequential GET /metrics; median and worst.

"Off" is the hub with ``metrics_port = 0``: no server and no collector. The counters and
histograms in the code paths are observed either way (a microsecond each): the benchmark
measures what turning metrics on changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench import heartbeats
from bench.metrics_lab import (
    ListedPeers,
    RealPeers,
    Scraper,
    hub_metrics,
    scrape,
    simulated_members,
)
from bench.scheduling import AGENT_CAPACITY, Harness, throughput_run
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.pool.auth import Caller
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import LOOPBACK
from tests.support.scratch import scratch_dir_with_redis

GOAL_RATIO = 0.95
GOAL_SCRAPE_MS = 100.0


def served_and_scraped(workdir: Path, interval: float) -> Any:
    @contextlib.asynccontextmanager
    async def attach(pool: Pool) -> AsyncIterator[None]:
        metrics = hub_metrics(workdir, lambda: pool, {}, ListedPeers([]), pool.db)
        metrics.start()
        scraper = Scraper(metrics.port, interval).start()
        try:
            yield
        finally:
            await asyncio.to_thread(scraper.stop)
            await asyncio.to_thread(metrics.stop)

    return attach


async def scheduling(
    args: argparse.Namespace, redis_server: RedisServer, workdir: Path
) -> dict[str, Any]:
    figures: dict[str, list[float]] = {"off": [], "on": []}
    for run in range(args.runs):
        for mode in ("off", "on") if run % 2 == 0 else ("on", "off"):
            attach = served_and_scraped(workdir, args.stress_interval) if mode == "on" else None
            result = await throughput_run(
                redis_server, workdir, args.agents, args.tasks, attach=attach
            )
            figures[mode].append(result["placements_per_second"])
    return compared(figures, higher_is_better=True)


def heartbeat_steps(
    args: argparse.Namespace, redis_server: RedisServer, workdir: Path
) -> dict[str, Any]:
    """Off, on (scraped every --scrape-interval s) and stressed (every --stress-interval s),
    in an order rotated each run."""
    ca = CertificateAuthority.create()
    server = ca.issue_server_certificate([LOOPBACK])
    identities = heartbeats.issue(ca, args.heartbeat_agents)
    intervals = {"off": 0.0, "on": args.scrape_interval, "stressed": args.stress_interval}
    modes = list(intervals)
    figures: dict[str, list[float]] = {mode: [] for mode in modes}
    sustained: dict[str, list[bool]] = {mode: [] for mode in modes}
    scrapes: dict[str, list[int]] = {mode: [] for mode in modes}
    for run in range(args.runs):
        for mode in modes[run % 3 :] + modes[: run % 3]:
            step_args = argparse.Namespace(
                window=args.window,
                generators=2,
                profile=False,
                metrics=mode != "off",
                scrape_interval=intervals[mode],
            )
            step = heartbeats.run_step(step_args, redis_server, workdir, ca, server, identities)
            handled = max(1, step["heartbeats_handled"])
            figures[mode].append(step["pool_cores"] * step["window_seconds"] / handled * 1000)
            sustained[mode].append(bool(step["sustained"]))
            scrapes[mode].append(step.get("scrapes", {}).get("scrapes", 0))
    report = compared(figures, higher_is_better=False)
    stressed = statistics.median(figures["stressed"])
    report["stressed"] = figures["stressed"]
    report["median_stressed"] = stressed
    report["ratio_stressed"] = report["median_off"] / stressed
    report["sustained"] = {mode: all(values) for mode, values in sustained.items()}
    report["scrapes"] = scrapes
    return report


def compared(figures: dict[str, list[float]], higher_is_better: bool) -> dict[str, Any]:
    off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
    ratio = on / off if higher_is_better else off / on  # >= 0.95: within 5%
    return {
        "off": figures["off"],
        "on": figures["on"],
        "median_off": off,
        "median_on": on,
        "ratio": ratio,
        "goal_met": ratio >= GOAL_RATIO,
    }


async def one_scrape(
    args: argparse.Namespace, redis_server: RedisServer, workdir: Path
) -> dict[str, Any]:
    peers = RealPeers(args.scrape_agents)
    harness = Harness(redis_server, workdir)
    try:
        pool = await harness.start()
        for index in range(args.scrape_agents):
            caller = Caller(f"agent{index:04d}", f"agent-{index}", "worker", LOOPBACK, index + 1)
            session = await pool.connect(caller, pb.Register(capacity=AGENT_CAPACITY))
            pool.liveness.beat(session, pb.Heartbeat(cpu_percent=12.5, memory_used_bytes=1 << 30))
        members = simulated_members(args.scrape_agents, peers.keys)
        metrics = hub_metrics(workdir, lambda: pool, members, peers.interface, pool.db)
        metrics.start()
        try:
            timings, size = [], 0
            for _ in range(args.scrapes):
                seconds, size = await asyncio.to_thread(scrape, metrics.port)
                timings.append(seconds * 1000)
        finally:
            await asyncio.to_thread(metrics.stop)
    finally:
        await harness.stop()
        peers.close()
    median = statistics.median(timings)
    return {
        "agents": args.scrape_agents,
        "scrapes": len(timings),
        "median_ms": median,
        "max_ms": max(timings),
        "bytes": size,
        "goal_met": median < GOAL_SCRAPE_MS,
    }


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def summary(report: dict[str, Any]) -> str:
    s, h, c = report["scheduling"], report["heartbeats"], report["scrape"]
    runs, agents = report["runs"], report["heartbeat_agents"]
    return "\n".join(
        [
            f"metrics benchmark ({report['cpus']} CPUs; {runs} runs of each mode, order rotated)",
            f"  scheduling, placements/s: off {s['median_off']:.0f}, "
            f"on {s['median_on']:.0f} (scraped every {report['stress_interval']:g} s); "
            f"on/off {s['ratio']:.3f} (goal >= {GOAL_RATIO}: {verdict(s['goal_met'])})",
            f"    runs: off {fmt(s['off'])}, on {fmt(s['on'])}",
            f"  heartbeats at {agents} agents, pool CPU-s per 1,000 beats: "
            f"off {h['median_off']:.4f}, on {h['median_on']:.4f} (scraped every "
            f"{report['scrape_interval']:g} s); off/on {h['ratio']:.3f} "
            f"(goal >= {GOAL_RATIO}: {verdict(h['goal_met'])})",
            f"    stressed (scraped every {report['stress_interval']:g} s): "
            f"{h['median_stressed']:.4f}, off/stressed {h['ratio_stressed']:.3f}",
            f"    runs: off {fmt(h['off'])}, on {fmt(h['on'])}, stressed {fmt(h['stressed'])}; "
            f"scrapes per window: on {h['scrapes']['on']}, stressed {h['scrapes']['stressed']}; "
            f"sustained: {h['sustained']}",
            f"  one scrape with {c['agents']} agents, members and WireGuard peers: "
            f"median {c['median_ms']:.1f} ms, worst {c['max_ms']:.1f} ms of {c['scrapes']}, "
            f"{c['bytes'] / 1e6:.2f} MB (goal < {GOAL_SCRAPE_MS:.0f} ms: {verdict(c['goal_met'])})",
        ]
    )


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", type=int, default=100, help="scheduling: simulated agents")
    parser.add_argument("--tasks", type=int, default=6000, help="scheduling: tasks per run")
    parser.add_argument("--heartbeat-agents", type=int, default=2500)
    parser.add_argument("--window", type=float, default=30.0, help="heartbeats: measured seconds")
    parser.add_argument("--scrape-agents", type=int, default=5000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        help="heartbeats, on: seconds between scrapes (Prometheus' default)",
    )
    parser.add_argument(
        "--stress-interval",
        type=float,
        default=1.0,
        help="scheduling, and heartbeats stressed: seconds between scrapes",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    began = time.monotonic()
    with scratch_dir_with_redis("hivemind-bench-") as (workdir, redis_server):
        report: dict[str, Any] = {
            "benchmark": "metrics",
            "cpus": psutil.cpu_count(),
            "runs": args.runs,
            "heartbeat_agents": args.heartbeat_agents,
            "scrape_interval": args.scrape_interval,
            "stress_interval": args.stress_interval,
            "scheduling": asyncio.run(scheduling(args, redis_server, workdir)),
            "heartbeats": heartbeat_steps(args, redis_server, workdir),
            "scrape": asyncio.run(one_scrape(args, redis_server, workdir)),
        }
    report["seconds"] = time.monotonic() - began
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
