"""Throughput benchmark: 10,000 no-op tasks submitted and waited for, end to end, through
the real pool, and the same tasks on Ray, Dask and Celery in the same run.

    python bench/throughput.py [--tasks 10000] [--agents 100] [--runs 3] [--in-flight 64]
                               [--rate 200] [--rate-tasks 1000] [--generators 1]
                               [--peers/--no-peers] [--profile] [--json]

Goals: >= 2,000 tasks/s, >= 1.0x Ray's tasks/s, <= 0.5 ms of pool CPU per task, and a p50
submit -> result <= 5 ms at a steady 200 tasks/s.

Method. A real redis-server (127.0.0.1, free port, temp dir, AOF on as in production) and,
per run, a fresh database and a fresh pool server process: bench/heartbeat_lab.py's
``serve`` (``Pool`` plus ``create_server``: gRPC with mutual TLS on 127.0.0.1, as the hub
runs it). The agents are members recorded in Redis as enrollment records them, each with
its own certificate, channel and ``Connect`` stream, in ``--generators`` other processes
(bench/throughput_lab.py): each registers 4 CPUs and 8 GiB and answers every ``Assign``
with what agent/worker.py sends for an attempt that ran nothing: ``started``, then (after
a no-op executor in a thread) a ``succeeded`` result without output; its writer also sends
a heartbeat after any message when nothing else waits, and one a second when idle, as the
worker's does. A submitter process is an operator node (its own certificate, funded in
the ledger) on the tasks API, as ``hivemind-pool submit`` and ``wait`` are: ``Submit`` of
the command's request for ``--image hivemind/busybox:latest --cpu 1 --memory 256M -- true``,
then ``Get`` until the task has ended; the first Get 2 ms after the Submit, then doubling
up to the command's 0.25 s. At most ``--in-flight`` tasks are not yet seen ended.

Per run: a warm-up of 100 tasks, then ``--tasks`` tasks as fast as the slots allow:
tasks/s is their count over the time from the first Submit to the last result the client
saw. Latency, submit -> result: from the Submit call to the pool's ``ended_at`` (the result
accepted; ``time.time()`` on one machine) and, beside it, to the Get that saw it. CPU
seconds of the pool process (all threads; psutil), redis-server, the agents and the
submitter over the phase, until the last task is settled (escrow paid out), per task.
Then ``--rate-tasks`` tasks at a steady ``--rate`` a second (the same slots). The medians
of the ``--runs`` runs are printed beside the goals.

Peers (``pip install '.[bench]'``), each run after HiveMind's, the same no-op tasks, all
submitted and then every result waited for, after a warm-up of 100: Ray (``ray.init
(num_cpus=2)``, ``@ray.remote`` calls, ``ray.get``), Dask (``LocalCluster(n_workers=2,
threads_per_worker=1)``, ``client.map`` and ``gather``) and Celery (a redis-server of its
own on loopback as broker and result backend, a worker of 2 prefork processes, ``.delay``
then ``.get``): tasks/s and HiveMind/peer. A peer not installed is one line saying so.

Caveat: the two cores are shared by the pool, redis-server, the agents and the submitter
(and each peer by all of its processes); every one's CPU is printed. The pool process
configures no logging (the hub writes a line per result at INFO). ``--profile`` runs one
more run with the pool under cProfile and prints its top functions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import redis

from bench import throughput_lab as lab
from bench.heartbeat_lab import Child, Identity, PoolConfig, cpu_seconds, serve
from bench.heartbeats import issue, record_nodes, wait_for_sessions
from hivemind_cluster.client.channel import Identity as ChannelIdentity
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants as mesh_keys
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.model.accounts import TREASURY
from hivemind_cluster.pool.ledger import Ledger
from tests.support.poolkit import LOOPBACK, node_record
from tests.support.scratch import connect_with_every_library, scratch_dir_with_redis

GOAL_TASKS_PER_SECOND = 2000
GOAL_RAY_RATIO = 1.0
GOAL_POOL_CPU_MS = 0.5
GOAL_P50_MS = 5.0
OPERATOR = "bench-operator"
PEERS = {"ray": "Ray", "dask": "Dask", "celery": "Celery"}
INSTALL = "pip install '.[bench]'"


@dataclass
class Bench:
    """What every run uses: the Redis, the work directory, the CA and the identities."""

    redis_server: RedisServer
    workdir: Path
    ca: CertificateAuthority
    server: tuple[bytes, bytes]
    agents: list[Identity]
    operator: tuple[bytes, bytes]


def prepare(redis_server: RedisServer, workdir: Path, agents: int) -> Bench:
    ca = CertificateAuthority.create()
    operator = ca.issue_client_certificate(OPERATOR, LOOPBACK)
    server = ca.issue_server_certificate([LOOPBACK])
    return Bench(redis_server, workdir, ca, server, issue(ca, agents), operator)


def members(bench: Bench) -> redis.Redis:
    """A flushed database with the agents and the operator recorded as members."""
    db = connect_with_every_library(bench.redis_server)
    record_nodes(db, bench.agents)
    now = time.time()
    db.hset(
        mesh_keys.NODE.format(id=OPERATOR), mapping=node_record(OPERATOR, "operator", LOOPBACK, now)
    )
    db.zadd(mesh_keys.NODES, {OPERATOR: now})
    return db


def hivemind_run(
    args: argparse.Namespace, bench: Bench, index: int, profile: bool
) -> dict[str, Any]:
    redis_server = bench.redis_server
    assert redis_server.process is not None
    redis_ps = psutil.Process(redis_server.process.pid)
    db = members(bench)
    info = (redis_server.bind, redis_server.port, redis_server.password)
    config = PoolConfig(info, str(bench.workdir / f"pool-{index}"), *bench.server, bench.ca.pem)
    pool = Child(serve, config, profile)
    children: list[Child] = []
    done = False
    try:
        address = f"{LOOPBACK}:{pool.receive(60)}"
        ledger = Ledger(db)  # the pool's start made the supply: fund the operator
        ledger.open_account(OPERATOR, "user")
        ledger.transfer(TREASURY, OPERATOR, 10**15, "benchmark funds", key="benchmark-funds")
        shares = [bench.agents[i :: args.generators] for i in range(args.generators)]
        began = time.monotonic()
        for share in shares:
            if share:
                children.append(Child(lab.run_agents, address, bench.ca.pem, share))
        generators = list(children)
        sessions = wait_for_sessions(pool, generators, len(bench.agents), began)
        if sessions < len(bench.agents):
            raise SystemExit(f"error: {sessions} of {len(bench.agents)} agents connected")
        identity = ChannelIdentity(OPERATOR, *bench.operator, bench.ca.pem, address)
        submitter = Child(lab.submit_tasks, identity)
        children.append(submitter)
        if submitter.receive(60) != "ready":
            raise SystemExit("error: the submitter did not connect")
        phases = Phases(pool, generators, submitter, redis_ps)
        phases.measure(lab.Plan(lab.WARMUP, args.in_flight))
        result = phases.measure(lab.Plan(args.tasks, args.in_flight))
        if args.rate and args.rate_tasks:
            paced = phases.measure(lab.Plan(args.rate_tasks, args.in_flight, args.rate))
            result.update({f"paced_{key}": value for key, value in paced.items()})
        done = True
    finally:
        if not done:  # failed or interrupted: nothing is waited for
            for child in [*children, pool]:
                child.process.terminate()
        for child in reversed(children):
            child.stop()
        last = pool.stop()
        db.close()
    if isinstance(last, str):
        result["profile"] = last
    return result


@dataclass
class Phases:
    pool: Child
    generators: list[Child]
    submitter: Child
    redis_ps: psutil.Process

    def cpu(self) -> list[float]:
        agents = sum(g.cpu() for g in self.generators)
        return [self.pool.cpu(), cpu_seconds(self.redis_ps), agents, self.submitter.cpu()]

    def counts(self) -> dict[str, int]:
        """The agents' counts (bench/throughput_lab.py), added up."""
        total: dict[str, int] = {}
        for generator in self.generators:
            for name, count in generator.ask().items():
                if isinstance(count, int):
                    total[name] = total.get(name, 0) + count
        return total

    def measure(self, plan: lab.Plan) -> dict[str, Any]:
        counts, cpu = self.counts(), self.cpu()
        self.submitter.conn.send(plan)
        phase: lab.Phase = self.submitter.receive(120 + plan.tasks / 10)
        used = [after - before for before, after in zip(cpu, self.cpu(), strict=True)]
        agents = {name: n - counts.get(name, 0) for name, n in self.counts().items()}
        return figures(phase, used, agents)


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


def figures(phase: lab.Phase, cpu: list[float], agents: dict[str, int]) -> dict[str, Any]:
    count = len(phase.submitted)
    if not count:
        raise SystemExit(f"error: no task ended ({phase.errors})")
    first, last = min(phase.submitted), max(phase.seen)
    pool_ms = sorted((e - s) * 1000 for s, e in zip(phase.submitted, phase.ended, strict=True))
    seen_ms = sorted((e - s) * 1000 for s, e in zip(phase.submitted, phase.seen, strict=True))
    per_task = [seconds * 1000 / count for seconds in cpu]
    return {
        "tasks": count,
        "tasks_per_second": count / (last - first),
        "submitted_per_second": count / max(1e-9, max(phase.submitted) - first),
        "p50_ms": percentile(pool_ms, 0.5),
        "p99_ms": percentile(pool_ms, 0.99),
        "seen_p50_ms": percentile(seen_ms, 0.5),
        "seen_p99_ms": percentile(seen_ms, 0.99),
        "pool_cpu_ms": per_task[0],
        "redis_cpu_ms": per_task[1],
        "agents_cpu_ms": per_task[2],
        "submitter_cpu_ms": per_task[3],
        "gets_per_task": phase.gets / count,
        "messages_per_task": {
            name.removeprefix("sent_"): n / count
            for name, n in agents.items()
            if name.startswith("sent_")
        },
        "agents_rejected": agents.get("rejected", 0),
        "agents_failed": agents.get("failed", 0),
        "statuses": phase.statuses,
        "errors": phase.errors,
        "settle_seconds": phase.settle_seconds,
    }


# ---- the peers --------------------------------------------------------------------------


PEER_RUNS: dict[str, Callable[[int, Path], tuple[str, float]]] = {
    "ray": lab.ray_rate,
    "dask": lab.dask_rate,
    "celery": lab.celery_rate,
}


def installed(peer: str) -> bool:
    module = "dask.distributed" if peer == "dask" else peer
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # dask without distributed
        return False


# ---- the run ----------------------------------------------------------------------------

ROWS = [  # label, key, format
    ("tasks/s (first Submit -> last result seen)", "tasks_per_second", "{:,.0f}"),
    ("submit -> result accepted, p50 ms", "p50_ms", "{:.1f}"),
    ("submit -> result accepted, p99 ms", "p99_ms", "{:.1f}"),
    ("submit -> result seen (Get), p50 ms", "seen_p50_ms", "{:.1f}"),
    ("submit -> result seen (Get), p99 ms", "seen_p99_ms", "{:.1f}"),
    ("pool CPU ms per task", "pool_cpu_ms", "{:.2f}"),
    ("redis-server CPU ms per task", "redis_cpu_ms", "{:.2f}"),
    ("agents' CPU ms per task", "agents_cpu_ms", "{:.2f}"),
    ("submitter CPU ms per task", "submitter_cpu_ms", "{:.2f}"),
    ("Gets per task", "gets_per_task", "{:.1f}"),
    ("paced: achieved submissions/s", "paced_submitted_per_second", "{:,.0f}"),
    ("paced: submit -> result accepted, p50 ms", "paced_p50_ms", "{:.1f}"),
    ("paced: submit -> result accepted, p99 ms", "paced_p99_ms", "{:.1f}"),
    ("paced: submit -> result seen (Get), p50 ms", "paced_seen_p50_ms", "{:.1f}"),
    ("paced: pool CPU ms per task", "paced_pool_cpu_ms", "{:.2f}"),
]
GOALS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "tasks_per_second": (f">= {GOAL_TASKS_PER_SECOND:,}", lambda v: v >= GOAL_TASKS_PER_SECOND),
    "pool_cpu_ms": (f"<= {GOAL_POOL_CPU_MS}", lambda v: v <= GOAL_POOL_CPU_MS),
    "paced_p50_ms": (f"<= {GOAL_P50_MS:g}", lambda v: v <= GOAL_P50_MS),
}


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [key for _label, key, _fmt in ROWS if key in runs[0]]
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def run(args: argparse.Namespace) -> dict[str, Any]:
    peers = [p for p in PEERS if installed(p)] if args.peers else []
    runs: list[dict[str, Any]] = []
    peer_runs: dict[str, list[float]] = {peer: [] for peer in peers}
    names: dict[str, str] = {}
    profile = ""
    with scratch_dir_with_redis("hivemind-bench-") as (workdir, redis_server):
        bench = prepare(redis_server, workdir, args.agents)
        for index in range(args.runs):
            runs.append(hivemind_run(args, bench, index, False))
            print(f"run {index + 1}: {line(runs[-1])}", file=sys.stderr)
            for peer in peers:
                names[peer], rate = PEER_RUNS[peer](args.tasks, workdir)
                peer_runs[peer].append(rate)
                print(f"run {index + 1}: {names[peer]}: {rate:,.0f} tasks/s", file=sys.stderr)
        if args.profile:
            profile = hivemind_run(args, bench, args.runs, True).get("profile", "")
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "tasks": args.tasks,
        "agents": args.agents,
        "generators": args.generators,
        "in_flight": args.in_flight,
        "rate": args.rate,
        "rate_tasks": args.rate_tasks,
        "cpus": psutil.cpu_count(),
        "runs": runs,
        "median": medians(runs),
        "peers": {},
    }
    hivemind = report["median"]["tasks_per_second"]
    for peer, label in PEERS.items():
        if peer not in peers:
            report["peers"][peer] = {"installed": False, "name": label}
            continue
        rate = statistics.median(peer_runs[peer])
        report["peers"][peer] = {
            "installed": True,
            "name": names[peer],
            "runs": peer_runs[peer],
            "tasks_per_second": rate,
            "ratio": hivemind / rate,
        }
    if profile:
        report["profile"] = profile
    return report


def line(result: dict[str, Any]) -> str:
    return (
        f"{result['tasks_per_second']:,.0f} tasks/s, p50/p99 {result['p50_ms']:.1f}/"
        f"{result['p99_ms']:.1f} ms, pool {result['pool_cpu_ms']:.2f} CPU-ms/task"
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def summary(report: dict[str, Any]) -> str:
    runs, median = report["runs"], report["median"]
    lines = [
        f"throughput: {report['tasks']:,} no-op tasks submitted and waited for through the "
        f"real pool (mTLS gRPC, Redis), {report['agents']} simulated agents in "
        f"{report['generators']} process(es), at most {report['in_flight']} in flight; "
        f"paced: {report['rate_tasks']:,} at {report['rate']:g}/s; {report['cpus']} CPUs "
        f"shared by all; {len(runs)} run(s)",
        f"  {'':44}"
        + "".join(f"{f'run {i + 1}':>9}" for i in range(len(runs)))
        + f"{'median':>9}  goal",
    ]
    for label, key, fmt in ROWS:
        if key not in median:
            continue
        cells = "".join(f"{fmt.format(run[key]):>9}" for run in runs)
        value = median[key]
        goal, met = GOALS.get(key, ("", None))
        judged = f"  {goal}: {verdict(met(value))}" if met is not None else ""
        lines.append(f"  {label:44}{cells}{fmt.format(value):>9}{judged}")
    messages = runs[-1]["messages_per_task"]
    sent = ", ".join(f"{kind} {n:.2f}" for kind, n in sorted(messages.items()))
    lines.append(f"  agent messages per task (last run): {sent}")
    for index, result in enumerate(runs):
        odd = {k: v for k, v in result["statuses"].items() if k != "succeeded"}
        trouble = (result["errors"], result["agents_rejected"], result["agents_failed"])
        if odd or any(trouble):
            lines.append(
                f"  run {index + 1}: NOT all succeeded: {odd}, submission errors "
                f"{trouble[0]}, results rejected {trouble[1]}, agents failed {trouble[2]}"
            )
    hivemind = median["tasks_per_second"]
    lines.append(f"peers: the same {report['tasks']:,} no-op tasks, all submitted, then waited for")
    for peer, found in report["peers"].items():
        if not found["installed"]:
            lines.append(f"  {found['name']}: not installed ({INSTALL})")
            continue
        each = ", ".join(f"{rate:,.0f}" for rate in found["runs"])
        ratio = found["ratio"]
        goal = f"; goal >= {GOAL_RAY_RATIO:g}x: {verdict(ratio >= GOAL_RAY_RATIO)}"
        lines.append(
            f"  {found['name']}: {found['tasks_per_second']:,.0f} tasks/s (runs: {each}); "
            f"HiveMind/{PEERS[peer]} {hivemind:,.0f}/{found['tasks_per_second']:,.0f} = "
            f"{ratio:.2f}x" + (goal if peer == "ray" else "")
        )
    if "profile" in report:
        lines.append(f"pool process profile (one more run):\n{report['profile']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64, help="tasks not yet seen ended")
    parser.add_argument("--rate", type=float, default=200.0, help="paced phase: tasks/s")
    parser.add_argument("--rate-tasks", type=int, default=1000, help="paced phase: 0 for none")
    parser.add_argument("--generators", type=int, default=1, help="agent processes")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
