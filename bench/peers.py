"""Peer propagation benchmark: how fast a join or a revocation on the hub reaches every
member's peer stream, at 50 and 500 members (simulated: no WireGuard).

    python bench/peers.py [--members 50 500] [--events 10] [--generators 2] [--json]

Goal (issue 15): p99 < 200 ms at 50 members.

Method. A real redis-server (127.0.0.1, temp dir). A hub process: the real
``PeerDistributor`` (mesh/peering.py; no WireGuard interface, policy from a hub.toml without
one) served by the real ``MeshService`` on a gRPC server with the pool's mutual TLS and
interceptor (``PoolAuthorizer``), as the hub runs it. Members are recorded in Redis as
enrollment records them, each with its own client certificate; ``--generators`` other
processes play them: one channel and one ``Mesh/Peers`` stream each, acking every update's
revision as an agent does. Once every member holds its full set, each event in turn: a new
node activated (``nodes.activate``: what enrollment does, MESH_CHANGED published), or that
node revoked (``nodes.retire``). Latency: from just before the Redis write to the moment a
member's stream delivered the update naming it (CLOCK_MONOTONIC is system-wide, so the
processes' clocks compare). Events alternate join/revoke; the next starts once every member
saw the last. Prints p50/p99/max per size and event kind, and the hub process' CPU.

Then every member reports its paths as an agent does (every other member, every
PATHS_EVERY seconds; half direct): the hub's CPU per second while only that goes on, the
size of the path records it keeps (what ``hivemind-hub nodes`` reads: all of them), and
the same events again, with the reports going on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.heartbeat_lab import Child, Identity, RedisInfo, answer_commands
from hivemind_cluster.core.grpcutil import (
    POOL_CHANNEL_OPTIONS,
    POOL_SERVER_OPTIONS,
    ErrorInterceptor,
)
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import constants, nodes, peerservice
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.peering import PeerDistributor
from hivemind_cluster.pool.auth import PoolAuthorizer
from hivemind_cluster.protos import mesh_pb2, mesh_pb2_grpc
from tests.support.poolkit import LOOPBACK, node_record
from tests.support.scratch import connect_with_every_library, scratch_dir_with_redis

GOAL_P99_MS = 200.0
GOAL_MEMBERS = 50
CONNECTS_IN_FLIGHT = 32
EVENT_TIMEOUT = 60.0
PATHS_EVERY = 2.0  # seconds between two path reports of a member (the agent's pace)
PATHS_MEASURED = 10.0  # seconds of reports only, for the hub's CPU


# ---- the hub process ------------------------------------------------------------------


def serve(conn: Connection, redis_info: RedisInfo, state_dir: str, tls: tuple[bytes, ...]) -> None:
    asyncio.run(_serve(conn, redis_info, state_dir, tls))


async def _serve(
    conn: Connection, redis_info: RedisInfo, state_dir: str, tls: tuple[bytes, ...]
) -> None:
    host, port, password = redis_info
    cert, key, ca = tls

    def client() -> aioredis.Redis:
        return aioredis.Redis(host=host, port=port, password=password, decode_responses=True)

    settings = HubSettings(state_dir=state_dir, overlay="127.0.0.0/24")
    distributor = PeerDistributor(settings, client(), None, Path(state_dir) / "hub.toml")
    await distributor.start()
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(PoolAuthorizer(client(), settings.hub_ip))],
        options=POOL_SERVER_OPTIONS,
    )
    peerservice.add_to(server, distributor)
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    bound = server.add_secure_port(f"{LOOPBACK}:0", credentials)
    await server.start()
    stop = answer_commands(conn, lambda _command: {"revision": distributor.revision})
    conn.send(bound)
    await stop.wait()
    await server.stop(grace=0.5)
    await distributor.stop()


# ---- the members ----------------------------------------------------------------------


class Seen:
    """What the simulated members saw: per (event key, member) the moment it arrived."""

    def __init__(self) -> None:
        self.full = 0  # members that hold their first (full) update
        self.added: dict[str, dict[str, float]] = {}  # public key -> member -> time
        self.removed: dict[str, dict[str, float]] = {}
        self.failed: dict[str, int] = {}
        self.reporting = asyncio.Event()  # set: members report their paths

    def note(self, member: str, update: mesh_pb2.PeerUpdate, now: float) -> None:
        for peer in update.peers:
            self.added.setdefault(peer.public_key, {}).setdefault(member, now)
        for key in update.removed:
            self.removed.setdefault(key, {}).setdefault(member, now)

    def answer(self, command: Any) -> Any:
        kind, key = command if isinstance(command, tuple) else ("counts", "")
        if kind == "added":
            return self.added.get(key, {})
        if kind == "removed":
            return self.removed.get(key, {})
        if kind == "paths":
            self.reporting.set()
            return True
        return {"full": self.full, "failed": dict(self.failed)}


def members(conn: Connection, address: str, ca_pem: bytes, identities: list[Identity]) -> None:
    asyncio.run(_members(conn, address, ca_pem, identities))


async def _members(
    conn: Connection, address: str, ca_pem: bytes, identities: list[Identity]
) -> None:
    seen = Seen()
    handshakes = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    options = [*POOL_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]

    async def member(node_id: str, cert: bytes, key: bytes) -> None:
        credentials = grpc.ssl_channel_credentials(ca_pem, key, cert)
        acks: asyncio.Queue[mesh_pb2.MemberReport] = asyncio.Queue()
        await acks.put(mesh_pb2.MemberReport(applied_revision=0))

        async def reports() -> Any:
            while True:
                yield await acks.get()

        applied = [0]

        async def report_paths(keys: list[str]) -> None:
            """Once told to: a path to every other member every PATHS_EVERY, as an agent."""
            await seen.reporting.wait()
            await asyncio.sleep(PATHS_EVERY * (hash(node_id) % 1000) / 1000)  # spread out
            now = int(time.time())
            paths = [
                mesh_pb2.PeerPath(
                    public_key=key,
                    direct=i % 2 == 0,
                    endpoint=f"198.51.100.{i % 250 + 1}:51820",
                    last_handshake=now,
                    rx_bytes=1 << 20,
                    tx_bytes=1 << 20,
                )
                for i, key in enumerate(keys)
            ]
            while True:
                endpoints = ["192.0.2.10:51820", "10.9.0.10:51820"]
                report = mesh_pb2.MemberReport(applied_revision=applied[0], endpoints=endpoints)
                report.paths.extend(paths)
                await acks.put(report)
                await asyncio.sleep(PATHS_EVERY)

        reporter: asyncio.Task[None] | None = None
        try:
            async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
                async with handshakes:
                    call = mesh_pb2_grpc.MeshStub(channel).Peers(reports())
                    first = await call.read()
                assert isinstance(first, mesh_pb2.PeerUpdate) and first.full
                seen.full += 1
                applied[0] = first.revision
                await acks.put(mesh_pb2.MemberReport(applied_revision=first.revision))
                reporter = asyncio.create_task(report_paths([p.public_key for p in first.peers]))
                while isinstance(update := await call.read(), mesh_pb2.PeerUpdate):
                    seen.note(node_id, update, time.monotonic())
                    applied[0] = update.revision
                    await acks.put(mesh_pb2.MemberReport(applied_revision=update.revision))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            seen.failed[name] = seen.failed.get(name, 0) + 1
        finally:
            if reporter is not None:
                reporter.cancel()

    stop = answer_commands(conn, seen.answer)
    tasks = [asyncio.create_task(member(*identity)) for identity in identities]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- the parent -----------------------------------------------------------------------


def issue(ca: CertificateAuthority, count: int, prefix: str) -> list[Identity]:
    return [
        (f"{prefix}{i:05d}", *ca.issue_client_certificate(f"{prefix}{i:05d}", LOOPBACK))
        for i in range(count)
    ]


def record(db: redis.Redis, node_id: str, state: str = nodes.ACTIVE) -> None:
    fields = node_record(node_id, "worker", LOOPBACK, time.time())
    db.hset(constants.NODE.format(id=node_id), mapping={**fields, "state": state})
    db.zadd(constants.NODES, {node_id: time.time()})


def wait_for(condition: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def latencies(
    generators: list[Child], kind: str, key: str, began: float, count: int
) -> list[float]:
    """Milliseconds from ``began`` to each member's receipt, once all ``count`` have it."""
    times: dict[str, float] = {}

    def everyone() -> bool:
        times.clear()
        for generator in generators:
            generator.conn.send((kind, key))
            times.update(generator.receive(30))
        return len(times) >= count

    wait_for(everyone, f"every member to see the {kind} of {key}", EVENT_TIMEOUT)
    return [(t - began) * 1000 for t in times.values()]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def figures(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 1),
        "p99_ms": round(percentile(values, 0.99), 1),
        "max_ms": round(max(values), 1),
        "samples": len(values),
    }


def propagation(
    db: redis.Redis, generators: list[Child], size: int, events: int, tag: str
) -> dict[str, list[float]]:
    """Latencies of ``events`` joins and as many revocations, one at a time."""
    samples: dict[str, list[float]] = {"join": [], "revoke": []}
    for index in range(events):
        node_id = f"new{size}{tag}{index:03d}"
        record(db, node_id, state="pending")
        began = time.monotonic()
        nodes.activate(db, node_id, 1000 + index, "")
        samples["join"] += latencies(generators, "added", node_id, began, size)
        began = time.monotonic()
        nodes.retire(db, nodes.get_node(db, node_id), nodes.REVOKED)
        samples["revoke"] += latencies(generators, "removed", node_id, began, size)
    return samples


def run_size(
    db: redis.Redis, info: RedisInfo, workdir: Path, ca: CertificateAuthority, size: int, args: Any
) -> dict[str, Any]:
    db.flushall()
    identities = issue(ca, size, "sim")
    for node_id, _cert, _key in identities:
        record(db, node_id)
    server_cert, server_key = ca.issue_server_certificate([LOOPBACK])
    hub = Child(serve, info, str(workdir), (server_cert + ca.pem, server_key, ca.pem))
    generators: list[Child] = []
    try:
        address = f"{LOOPBACK}:{hub.receive(60)}"
        share = [identities[i :: args.generators] for i in range(args.generators)]
        generators = [Child(members, address, ca.pem, part) for part in share if part]

        def connected() -> bool:
            counts = [g.ask() for g in generators]
            if any(c["failed"] for c in counts):
                raise AssertionError(f"member streams failed: {counts}")
            return sum(int(c["full"]) for c in counts) >= size

        wait_for(connected, f"{size} members' full sets", 60 + size / 10)
        cpu_before = hub.cpu()
        samples = propagation(db, generators, size, args.events, "idle")
        hub_cpu = hub.cpu() - cpu_before
        for generator in generators:
            generator.conn.send(("paths", ""))
            generator.receive(30)
        time.sleep(PATHS_EVERY + 1)  # every member reported once, and keeps at it
        cpu_before = hub.cpu()
        time.sleep(PATHS_MEASURED)
        paths_cpu = (hub.cpu() - cpu_before) / PATHS_MEASURED
        sizes = [db.strlen(constants.PATHS.format(id=i)) for i, _c, _k in identities]
        reporting = propagation(db, generators, size, args.events, "paths")
        return {
            "members": size,
            "events": args.events,
            **{kind: figures(values) for kind, values in samples.items()},
            "all": figures(samples["join"] + samples["revoke"]),
            "hub_cpu_s": round(hub_cpu, 2),
            "paths_hub_cpu_per_s": round(paths_cpu, 3),
            "path_record_bytes": round(statistics.mean(sizes)) if sizes else 0,
            "path_records_bytes": sum(sizes),
            "path_records": sum(1 for n in sizes if n),
            "all_while_reporting": figures(reporting["join"] + reporting["revoke"]),
        }
    finally:
        for generator in generators:
            generator.stop()
        hub.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--events", type=int, default=10, help="joins (and as many revokes)")
    parser.add_argument("--generators", type=int, default=2, help="member processes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_dir_with_redis("hivemind-bench-peers-") as (workdir, server):
        db = connect_with_every_library(server)
        info: RedisInfo = (server.bind, server.port, server.password)
        ca = CertificateAuthority.create()
        steps = [run_size(db, info, workdir, ca, size, args) for size in sorted(args.members)]
    at_goal = [s for s in steps if s["members"] == GOAL_MEMBERS]
    met = all(s["all"]["p99_ms"] < GOAL_P99_MS for s in at_goal)
    if args.json:
        print(json.dumps({"benchmark": "peers", "steps": steps, "goal_met": met}, indent=2))
    else:
        print("peer propagation: hub Redis write -> each member's stream (simulated members)")
        for step in steps:
            for kind in ("join", "revoke", "all"):
                f = step[kind]
                print(
                    f"  {step['members']:>4} members {kind:<6}: p50 {f['p50_ms']:>6} ms  "
                    f"p99 {f['p99_ms']:>6} ms  max {f['max_ms']:>6} ms  ({f['samples']} samples)"
                )
            print(f"  {step['members']:>4} members: hub CPU {step['hub_cpu_s']} s")
            f = step["all_while_reporting"]
            print(
                f"  {step['members']:>4} members, all reporting paths every {PATHS_EVERY:g} s: "
                f"hub CPU {step['paths_hub_cpu_per_s']} s/s; events p50 {f['p50_ms']} ms "
                f"p99 {f['p99_ms']} ms; path records {step['path_records']} x "
                f"{step['path_record_bytes']} B = {step['path_records_bytes'] / 1e6:.2f} MB"
            )
        verdict = "met" if met else "NOT met"
        print(f"  goal p99 < {GOAL_P99_MS:.0f} ms at {GOAL_MEMBERS} members: {verdict}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
