"""``hivemind-hub up``: run everything a hub is, until SIGTERM or SIGINT.

This is the composition root: the one module that wires mesh (WireGuard, guard,
enrollment), pool and web together. Every change ``serve`` makes (interface, sysctl,
nftables, Redis, servers, the web child) is pushed on one ``AsyncExitStack``, so a signal
or a failure at any step undoes exactly the steps done so far, in reverse order. Each is
also noted in ``up.json`` first (hub/reclaim.py), so that the next ``up`` can undo them if
this one dies without unwinding. While it runs, the hub restarts its children (Redis, the
web) when they die (hub/supervisor.py), and stops with an error if one keeps dying. It
also builds the blob store the pool serves task data from, and collects its garbage (at
start, then every GARBAGE_INTERVAL seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.core import names, redisdb
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.files import write_public
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.system import read_sysctl, write_sysctl
from hivemind_cluster.hub.auditmirror import start_audit
from hivemind_cluster.hub.database import (
    GRACE_SECONDS,
    HubDatabase,
    PoolCredentials,
    PoolRuntime,
)
from hivemind_cluster.hub.init import ensure_hub_client_certificate
from hivemind_cluster.hub.metrics import HubCollector, HubMetrics
from hivemind_cluster.hub.processes import ProcessIdentity, executable
from hivemind_cluster.hub.reclaim import UpRecord, claim
from hivemind_cluster.hub.supervisor import repeat_until_undone, run_until_stopped
from hivemind_cluster.hub.webprocess import WebProcess
from hivemind_cluster.mesh import guard, nodes, peerservice, policyrules, relaycount
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.enrollment import Enroller
from hivemind_cluster.mesh.enrollment import create_server as create_enrollment_server
from hivemind_cluster.mesh.peering import PeerDistributor
from hivemind_cluster.mesh.wireguard import (
    PeerConfig,
    WireGuardInterface,
    select_backend,
    userspace_pid,
)
from hivemind_cluster.pool.taskstore import tasks_live

log = logging.getLogger(__name__)
GARBAGE_INTERVAL = 300.0  # seconds between two collections of the blob store's garbage


@dataclass(frozen=True)
class HubFiles:
    """What the hub reads from its state directory, all of it before changing anything."""

    ca: CertificateAuthority
    server_cert: bytes  # with the CA appended: the chain enrollment and the pool present
    server_key: bytes
    wg_private_key: str
    wg_public_key: str
    redis_password: str

    @classmethod
    def read(cls, settings: HubSettings) -> HubFiles:
        root = settings.path
        ca = CertificateAuthority.load(root)
        return cls(
            ca,
            (root / names.SERVER_CERT).read_bytes() + ca.pem,
            (root / names.SERVER_KEY).read_bytes(),
            (root / names.WG_KEY).read_text().strip(),
            (root / names.WG_PUB).read_text().strip(),
            (root / names.REDIS_PASSWORD).read_text().strip(),
        )

    def pool_credentials(self) -> PoolCredentials:
        return PoolCredentials(self.redis_password, self.server_cert, self.server_key, self.ca.pem)


async def serve(settings: HubSettings, backend_name: str = "auto") -> None:
    """Run the hub until SIGTERM/SIGINT, then undo everything."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    files = HubFiles.read(settings)
    record = claim(settings, files.wg_public_key)  # refused while another hub runs
    async with contextlib.AsyncExitStack() as undo:
        undo.callback(record.close)  # last: only once everything else is undone
        interface, backend = bring_up_overlay(settings, files, backend_name, record, undo)
        distributor = peer_distributor(settings, files, interface, undo)
        extra = [lambda server: peerservice.add_to(server, distributor)]
        pool = PoolRuntime(settings, files.pool_credentials(), extra)
        database, client = start_redis(settings, files, pool, record, undo)
        await start_distribution(distributor, undo)
        restore_members(client, interface)  # only now: the hub's policy table is loaded
        pool.blobs = blobs = open_blob_store(settings, files, undo)
        enroller = Enroller(settings, files.ca, client, interface, files.wg_public_key)
        enrollment, port = await create_enrollment_server(
            enroller, settings.enroll_listen, files.server_cert, files.server_key
        )
        undo.push_async_callback(enrollment.stop, GRACE_SECONDS)
        ensure_hub_client_certificate(settings, files.ca)
        undo.push_async_callback(pool.close)
        await pool.open()
        relaying = settings.forward_between_peers
        collector = HubCollector(loop, lambda: pool.pool, distributor, interface, relaying)
        start_metrics(settings, collector, undo)
        start_garbage_collection(blobs, client, undo)
        start_audit(settings, client, undo)
        web = await start_web(settings, record, undo)
        publish_run_file(settings, backend, port, undo)
        log_addresses(settings, backend)
        await run_until_stopped(stop, [database, web], undo)


def bring_up_overlay(
    settings: HubSettings,
    files: HubFiles,
    backend_name: str,
    record: UpRecord,
    undo: contextlib.AsyncExitStack,
) -> tuple[WireGuardInterface, str]:
    """The WireGuard interface, forwarding between spokes and the underlay guard.

    The policy table (loaded later, by the distributor) is removed only after the
    interface is gone: no packet from a member is ever forwarded unfiltered."""
    backend = select_backend(backend_name)
    interface = WireGuardInterface(settings.interface)
    if interface.exists():
        raise SystemFailure(
            f"interface {settings.interface} already exists and is not this hub's "
            "(another program's, or left over: `ip link delete` it)"
        )
    address = f"{settings.hub_ip}/{settings.network.prefixlen}"
    record.note(interface=settings.interface, backend=backend.name)
    interface.up(backend, files.wg_private_key, address, settings.wg_port, peers=[])
    record.note(policy_table=True)
    undo.callback(policyrules.remove, settings.interface)  # runs after interface.down
    undo.callback(interface.down)
    if (pid := userspace_pid(settings.interface)) is not None:
        record.note(wireguard_go=ProcessIdentity.of(pid, executable("wireguard-go")))
    if settings.forward_between_peers:
        previous = read_sysctl("net.ipv4.ip_forward")
        record.note(ip_forward_before=previous)
        write_sysctl("net.ipv4.ip_forward", "1")
        undo.callback(write_sysctl, "net.ipv4.ip_forward", previous)
        # Counts what the hub relays between members, by source (mesh/relaycount.py).
        record.note(relay_counters=True)
        relaycount.install(settings.interface, [])
        undo.callback(relaycount.remove, settings.interface)
    if settings.guard_underlay:
        record.note(guard=True)
        guard.install(settings.interface, settings.overlay)
        undo.callback(guard.remove, settings.interface)
    return interface, backend.name


def start_redis(
    settings: HubSettings,
    files: HubFiles,
    pool: PoolRuntime,
    record: UpRecord,
    undo: contextlib.AsyncExitStack,
) -> tuple[HubDatabase, redis.Redis]:
    """Redis on the overlay address (a client of it with the mesh's library); no member
    can reach it yet: the interface has no peers."""
    database = HubDatabase(settings, files.redis_password, pool, record)
    undo.callback(database.stop)
    client = database.start()
    return database, client


def restore_members(client: redis.Redis, interface: WireGuardInterface) -> None:
    """The active members back on the interface: once the hub's policy table filters what
    they send (with ip_forward on, a member added earlier could be relayed unfiltered)."""
    for node in nodes.list_nodes(client):
        if node.state == nodes.ACTIVE:
            interface.add_peer(PeerConfig(node.wg_public_key, (f"{node.overlay_ip}/32",)))


def peer_distributor(
    settings: HubSettings,
    files: HubFiles,
    interface: WireGuardInterface,
    undo: contextlib.AsyncExitStack,
) -> PeerDistributor:
    """The source of the members' peer streams, on a Redis client of its own (it connects
    at its first command, once Redis runs); it loads the hub's policy rules."""
    db = aioredis.Redis(
        host=settings.hub_ip,
        port=settings.redis_port,
        password=files.redis_password,
        decode_responses=True,
        socket_connect_timeout=2,
    )
    undo.push_async_callback(db.aclose)

    def apply_hub_rules(ruleset: str) -> None:
        policyrules.apply(settings.interface, ruleset)

    policy_path = settings.path / names.HUB_CONFIG
    return PeerDistributor(settings, db, interface, policy_path, apply_hub_rules)


async def start_distribution(distributor: PeerDistributor, undo: contextlib.AsyncExitStack) -> None:
    """The running policy on the hub's forwarding path and in Redis, the members known:
    before any member is on the interface, the pool takes any stream or the web starts.
    (The policy table's removal is bring_up_overlay's: after the interface is gone.)"""
    undo.push_async_callback(distributor.stop)
    await distributor.start()


def open_blob_store(
    settings: HubSettings, files: HubFiles, undo: contextlib.AsyncExitStack
) -> BlobStore:
    """The hub's blob store, on a Redis client of its own (it is called from threads)."""
    db = redisdb.connect(settings.hub_ip, settings.redis_port, files.redis_password)
    undo.callback(db.close)
    return BlobStore.for_hub(settings, db)


def start_garbage_collection(
    blobs: BlobStore, db: redis.Redis, undo: contextlib.AsyncExitStack
) -> None:
    """Collect the blob store's garbage now and every GARBAGE_INTERVAL seconds, until the
    hub stops; a task's pins hold while it has not ended (asked of Redis through ``db``)."""

    async def collect() -> None:
        removed, freed = await asyncio.to_thread(
            blobs.collect_garbage, lambda task_ids: tasks_live(db, task_ids)
        )
        if removed:
            log.info("blob store: %d unused blobs removed (%d bytes)", removed, freed)

    failed = "blob garbage collection failed"
    repeat_until_undone(undo, "blob-garbage", GARBAGE_INTERVAL, collect, failed)


def start_metrics(
    settings: HubSettings, collector: HubCollector, undo: contextlib.AsyncExitStack
) -> None:
    """``/metrics`` on the overlay address (hub/metrics.py), unless ``metrics_port`` is 0."""
    if not settings.metrics_port:
        return
    metrics = HubMetrics(settings, collector)
    try:
        metrics.start()
    except OSError as exc:
        where = f"{settings.hub_ip}:{settings.metrics_port}"
        raise SystemFailure(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
    undo.callback(metrics.stop)


async def start_web(
    settings: HubSettings, record: UpRecord, undo: contextlib.AsyncExitStack
) -> WebProcess:
    """The web UI in a child process (a web that fails to start is stopped by start())."""
    web = WebProcess(settings, started=lambda identity: record.note(web=identity))
    undo.callback(web.stop)
    await web.start()
    return web


def publish_run_file(
    settings: HubSettings, backend: str, enroll_port: int, undo: contextlib.AsyncExitStack
) -> None:
    run = {
        "pid": os.getpid(),
        "backend": backend,
        "interface": settings.interface,
        "hub_ip": settings.hub_ip,
        "enroll_port": enroll_port,
        "pool_address": settings.pool_address,
        "web_url": f"http://{settings.hub_ip}:{settings.web_port}",
    }
    write_public(settings.path / names.RUN_FILE, json.dumps(run))
    undo.callback((settings.path / names.RUN_FILE).unlink, missing_ok=True)


def log_addresses(settings: HubSettings, backend: str) -> None:
    ip = settings.hub_ip
    log.info(
        "hub up: %s/%d on %s (%s WireGuard, port %d); enrollment on %s; "
        "Redis on %s:%d; pool on %s:%d; web on http://%s:%d; metrics %s",
        *(ip, settings.network.prefixlen, settings.interface, backend, settings.wg_port),
        *(settings.enroll_listen, ip, settings.redis_port, ip, settings.pool_port),
        *(ip, settings.web_port),
        f"on http://{ip}:{settings.metrics_port}/metrics" if settings.metrics_port else "off",
    )
