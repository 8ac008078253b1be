"""Scheduling benchmark: how fast the pool places tasks on 100 simulated agents.

    python bench/scheduling.py [--agents 100] [--tasks 5000] [--runs 3]
                               [--rate 200 500 1000] [--seconds 10] [--in-flight 16]
                               [--profile] [--json]

Goal: at least 2,000 tasks placed per second.

Method. A real redis-server (127.0.0.1, free port, temp dir, AOF on as in production) and
a real ``Pool`` object in this process; no gRPC. Each simulated agent is a ``Caller`` that
``pool.connect()`` registers (4 CPUs, 8 GiB: 400 task slots in all) and a task that drains
its ``AgentSession.outbox``: on every ``Assign`` it at once calls ``pool.handle()`` with a
``succeeded`` ``TaskResult`` (a no-op executor; no ``started`` message, no logs). Tasks
ask for 1 CPU and 256 MiB.

* Throughput: N tasks are submitted while no agent is connected, then the agents connect
  and the clock runs until every task has succeeded. Placements/s is N over the time to
  the last ``Assign``; completions/s is N over the time to the last accepted result. Each
  run uses a fresh Redis database and a fresh ``Pool``; the median of the runs is reported,
  with the CPU seconds this process and redis-server used meanwhile (Python vs Redis).
* Latency: with the agents connected, tasks are submitted at a steady rate, and for each
  the time from calling ``operations.submit()`` to its ``Assign`` being put in the agent's outbox
  is recorded (p50/p99). At most ``--in-flight`` submissions are outstanding at once;
  when the pool cannot keep up the achieved rate falls below the asked one.

If ``pool.handle()`` raises (it did with many Redis calls at once: the pool's redis-py
client refuses a 101st connection with MaxConnectionsError), the agent re-sends the result
after 10 ms, as it would after a reconnect, and the failures are counted and printed.

Not included: gRPC framing and TLS on the agent streams (see bench/heartbeats.py for the
stream cost), Docker. ``--profile`` runs one more throughput run under cProfile and prints
the top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.accounts import TREASURY
from hivemind_cluster.pool import operations
from hivemind_cluster.pool.auth import Caller
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.registry import AgentSession
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import LOOPBACK, GiB, fresh_pool
from tests.support.scratch import scratch_dir_with_redis

GOAL_PLACEMENTS_PER_SECOND = 2000
AGENT_CAPACITY = pb.Resources(cpu_millis=4000, memory_bytes=8 * GiB)


class StampedQueue(asyncio.Queue[pb.PoolMessage | None]):
    """An agent's outbox that notes when each ``Assign`` was put in it."""

    def __init__(self, stamps: dict[str, float]) -> None:
        super().__init__()
        self.stamps = stamps

    def put_nowait(self, item: pb.PoolMessage | None) -> None:
        if item is not None and item.WhichOneof("kind") == "assign":
            self.stamps[item.assign.task_id] = time.perf_counter()
        super().put_nowait(item)


@dataclass
class Harness:
    """One fresh ``Pool`` on a flushed Redis with simulated agents."""

    redis_server: RedisServer
    data_dir: Path
    pool: Pool | None = None
    assigned_at: dict[str, float] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)
    agents: list[asyncio.Task[None]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # pool.handle() failures

    async def start(self) -> Pool:
        # A long heartbeat timeout: the simulated agents send no heartbeats.
        settings = HubSettings(
            state_dir=str(self.data_dir), overlay="127.0.0.0/24", heartbeat_timeout=3600
        )
        self.pool = await fresh_pool(self.redis_server, settings)
        await self.pool.start()
        # Enough CPT for every task's escrow (each submission holds its price cap).
        await self.pool.ledger.open_account(OPERATOR.node_id, "user")
        await self.pool.ledger.transfer(
            TREASURY, OPERATOR.node_id, 10**15, "benchmark funds", key="benchmark-funds"
        )
        return self.pool

    async def stop(self) -> None:
        for agent in self.agents:
            agent.cancel()
        for agent in self.agents:
            with contextlib.suppress(asyncio.CancelledError):
                await agent
        if self.pool is not None:
            await self.pool.close()

    async def connect_agents(self, count: int) -> None:
        assert self.pool is not None
        for index in range(count):
            caller = Caller(f"agent{index:04d}", f"agent-{index}", "worker", LOOPBACK, index + 1)
            session = await self.pool.connect(caller, pb.Register(capacity=AGENT_CAPACITY))
            outbox = StampedQueue(self.assigned_at)
            while not session.outbox.empty():
                outbox.put_nowait(session.outbox.get_nowait())
            session.outbox = outbox
            self.agents.append(asyncio.create_task(self._agent(session)))

    async def _agent(self, session: AgentSession) -> None:
        """A no-op executor: every Assign succeeds at once."""
        assert self.pool is not None
        while (message := await session.outbox.get()) is not None:
            if message.WhichOneof("kind") != "assign":
                continue
            assign = message.assign
            result = pb.TaskResult(
                task_id=assign.task_id, attempt=assign.attempt, status="succeeded", exit_code=0
            )
            while True:
                try:
                    await self.pool.handle(session, pb.AgentMessage(result=result))
                    break
                except Exception as exc:  # over gRPC this would end the agent's stream
                    name = type(exc).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
                    await asyncio.sleep(0.01)  # the agent re-sends it, as on a reconnect
            self.finished_at[assign.task_id] = time.perf_counter()
            if len(self.finished_at) >= self.expected:
                self.done.set()


def task_request(index: int) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        image="hivemind/busybox:latest",
        command=["true"],
        name=f"bench-{index}",
        resources=pb.Resources(cpu_millis=1000, memory_bytes=256 << 20),
    )


OPERATOR = Caller("operator", "operator", "operator", LOOPBACK, 0)


async def submit_all(pool: Pool, count: int, concurrency: int = 50) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, concurrency):
        batch = [
            operations.submit(pool, OPERATOR, task_request(i))
            for i in range(start, min(count, start + concurrency))
        ]
        ids.extend(record.id for record in await asyncio.gather(*batch))
    return ids


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def throughput_run(
    redis_server: RedisServer,
    workdir: Path,
    agents: int,
    tasks: int,
    profiler: cProfile.Profile | None = None,
    attach: Callable[[Pool], contextlib.AbstractAsyncContextManager[object]] | None = None,
) -> dict[str, Any]:
    """``attach``: entered around the run with the pool (bench/metrics.py serves and
    scrapes the hub's /metrics meanwhile)."""
    harness = Harness(redis_server, workdir)
    pool = await harness.start()
    try:
        async with contextlib.AsyncExitStack() as attached:
            if attach is not None:
                await attached.enter_async_context(attach(pool))
            return await _throughput(harness, pool, redis_server, agents, tasks, profiler)
    finally:
        await harness.stop()


async def _throughput(
    harness: Harness,
    pool: Pool,
    redis_server: RedisServer,
    agents: int,
    tasks: int,
    profiler: cProfile.Profile | None,
) -> dict[str, Any]:
    me = psutil.Process()
    assert redis_server.process is not None
    redis_process = psutil.Process(redis_server.process.pid)
    await submit_all(pool, tasks)
    harness.expected = tasks
    await asyncio.sleep(0.2)  # let the submission burst settle (AOF, loops)
    python_before, redis_before = cpu_seconds(me), cpu_seconds(redis_process)
    if profiler is not None:
        profiler.enable()
    began = time.perf_counter()
    await harness.connect_agents(agents)
    await asyncio.wait_for(harness.done.wait(), 300)
    wall = time.perf_counter() - began
    if profiler is not None:
        profiler.disable()
    python_cpu = cpu_seconds(me) - python_before
    redis_cpu = cpu_seconds(redis_process) - redis_before
    last_assign = max(harness.assigned_at.values()) - began
    last_finish = max(harness.finished_at.values()) - began
    if len(harness.assigned_at) != tasks:
        raise SystemExit(f"error: {len(harness.assigned_at)} of {tasks} tasks were assigned")
    return {
        "placements_per_second": tasks / last_assign,
        "completions_per_second": tasks / last_finish,
        "seconds": wall,
        "python_cpu_seconds": python_cpu,
        "redis_cpu_seconds": redis_cpu,
        "handle_errors": harness.errors,
    }


async def latency_run(
    redis_server: RedisServer,
    workdir: Path,
    agents: int,
    rate: float,
    seconds: float,
    max_in_flight: int,
) -> dict[str, Any]:
    harness = Harness(redis_server, workdir)
    pool = await harness.start()
    count = int(rate * seconds)
    harness.expected = count
    submitted_at: dict[str, float] = {}

    in_flight = asyncio.Semaphore(max_in_flight)

    async def submit_one(index: int) -> None:
        try:
            began = time.perf_counter()
            record = await operations.submit(pool, OPERATOR, task_request(index))
            submitted_at[record.id] = began
        finally:
            in_flight.release()

    try:
        await harness.connect_agents(agents)
        await asyncio.sleep(0.2)
        pending: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()  # the submitter cannot keep up: the rate drops
            job = asyncio.create_task(submit_one(index))
            pending.add(job)
            job.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        offered = time.perf_counter() - start
        await asyncio.wait_for(harness.done.wait(), 120)
    finally:
        await harness.stop()
    latencies = sorted(
        (harness.assigned_at[task_id] - began) * 1000 for task_id, began in submitted_at.items()
    )
    return {
        "rate": rate,
        "achieved_rate": count / offered,
        "tasks": count,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": latencies[-1],
        "handle_errors": harness.errors,
    }


async def profiled_run(redis_server: RedisServer, workdir: Path, agents: int, tasks: int) -> str:
    """The placing and completing of one throughput run (not the submissions)."""
    profiler = cProfile.Profile()
    await throughput_run(redis_server, workdir, agents, tasks, profiler)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    return out.getvalue()


async def run(args: argparse.Namespace, redis_server: RedisServer, workdir: Path) -> dict[str, Any]:
    runs = [
        await throughput_run(redis_server, workdir / f"t{index}", args.agents, args.tasks)
        for index in range(args.runs)
    ]
    latency = [
        await latency_run(
            redis_server, workdir / f"l{rate}", args.agents, rate, args.seconds, args.in_flight
        )
        for rate in args.rate
    ]
    report: dict[str, Any] = {
        "agents": args.agents,
        "tasks": args.tasks,
        "runs": runs,
        "placements_per_second": statistics.median(r["placements_per_second"] for r in runs),
        "completions_per_second": statistics.median(r["completions_per_second"] for r in runs),
        "goal_placements_per_second": GOAL_PLACEMENTS_PER_SECOND,
        "latency": latency,
    }
    report["goal_met"] = report["placements_per_second"] >= GOAL_PLACEMENTS_PER_SECOND
    if args.profile:
        report["profile"] = await profiled_run(redis_server, workdir / "p", args.agents, args.tasks)
    return report


def errors_note(run: dict[str, Any]) -> str:
    if not run["handle_errors"]:
        return ""
    found = ", ".join(f"{count} {name}" for name, count in run["handle_errors"].items())
    return f"; pool.handle() FAILED (result re-sent): {found}"


def summary(report: dict[str, Any]) -> str:
    placed = report["placements_per_second"]
    runs = ", ".join(f"{r['placements_per_second']:,.0f}" for r in report["runs"])
    lines = [
        f"scheduling, {report['tasks']} tasks on {report['agents']} simulated agents "
        f"(in-process pool, real Redis, no-op executor), median of {len(report['runs'])} runs:",
        f"  placed:    {placed:,.0f} tasks/s "
        f"(runs: {runs}); "
        f"goal >= {GOAL_PLACEMENTS_PER_SECOND:,}: {'met' if report['goal_met'] else 'NOT met'} "
        f"({placed / GOAL_PLACEMENTS_PER_SECOND:.2f}x of the goal)",
        f"  completed: {report['completions_per_second']:,.0f} tasks/s",
    ]
    for r in report["runs"]:
        lines.append(
            f"  run: {r['seconds']:.2f} s wall, CPU: python {r['python_cpu_seconds']:.2f} s, "
            f"redis-server {r['redis_cpu_seconds']:.2f} s{errors_note(r)}"
        )
    for lat in report["latency"]:
        lines.append(
            f"  submit -> Assign in outbox at {lat['rate']:g} tasks/s "
            f"(achieved {lat['achieved_rate']:.0f}/s, {lat['tasks']} tasks): "
            f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms"
            f"{errors_note(lat)}"
        )
    if "profile" in report:
        lines.append(report["profile"])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[200.0, 500.0, 1000.0],
        help="submissions/s (latency)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a latency run")
    parser.add_argument(
        "--in-flight", type=int, default=16, help="most submissions at once (latency)"
    )
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with scratch_dir_with_redis("hivemind-bench-") as (workdir, redis_server):
        report = asyncio.run(run(args, redis_server, workdir))
    if args.json:
        print(json.dumps({"benchmark": "scheduling", **report}, indent=2))
    else:
        print(summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
