"""``hivemind-hub up``: run everything a hub is, until SIGTERM or SIGINT.

This is the composition root: the one module that wires mesh (WireGuard, guard,
enrollment), pool and web together. Every change ``serve`` makes (interface, sysctl,
nftables, Redis, servers, the web child) is pushed on one ``AsyncExitStack``, so a signal
or a failure at any step undoes exactly the steps done so far, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import redis

from hivemind_cluster.core import names
from hivemind_cluster.core.errors import AlreadyExists, SystemFailure
from hivemind_cluster.core.files import write_public
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.system import read_sysctl, write_sysctl
from hivemind_cluster.hub.init import ensure_hub_client_certificate
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.hub.webprocess import WebProcess
from hivemind_cluster.mesh import guard, nodes, store
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.enrollment import Enroller
from hivemind_cluster.mesh.enrollment import create_server as create_enrollment_server
from hivemind_cluster.mesh.wireguard import PeerConfig, WireGuardInterface, select_backend
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.service import create_server as create_pool_server

log = logging.getLogger(__name__)
GRACE_SECONDS = 2


def read_run_file(settings: HubSettings) -> dict[str, object] | None:
    """What the running hub published about itself, or None when it is not up."""
    try:
        data: dict[str, object] = json.loads((settings.path / names.RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
        return None
    return data


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


async def serve(settings: HubSettings, backend_name: str = "auto") -> None:
    """Run the hub until SIGTERM/SIGINT, then undo everything."""
    if read_run_file(settings) is not None:
        raise AlreadyExists(f"a hub is already running from {settings.state_dir}")
    files = HubFiles.read(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as undo:
        interface, backend = bring_up_overlay(settings, files, backend_name, undo)
        client = start_redis(settings, files, interface, undo)
        enroller = Enroller(settings, files.ca, client, interface, files.wg_public_key)
        enrollment, port = await create_enrollment_server(
            enroller, settings.enroll_listen, files.server_cert, files.server_key
        )
        undo.push_async_callback(enrollment.stop, GRACE_SECONDS)
        ensure_hub_client_certificate(settings, files.ca)
        pool = await Pool.open(settings, files.redis_password)
        undo.push_async_callback(pool.close)
        pool_server, _ = await create_pool_server(
            pool, settings.pool_address, files.server_cert, files.server_key, files.ca.pem
        )
        undo.push_async_callback(pool_server.stop, GRACE_SECONDS)
        await start_web(settings, undo)
        publish_run_file(settings, backend, port, undo)
        log_addresses(settings, backend)
        await stop.wait()
        log.info("hub stopping")


def bring_up_overlay(
    settings: HubSettings, files: HubFiles, backend_name: str, undo: contextlib.AsyncExitStack
) -> tuple[WireGuardInterface, str]:
    """The WireGuard interface, forwarding between spokes and the underlay guard."""
    backend = select_backend(backend_name)
    interface = WireGuardInterface(settings.interface)
    if interface.exists():
        raise SystemFailure(
            f"interface {settings.interface} already exists "
            "(another hub running, or left over: `ip link delete` it)"
        )
    address = f"{settings.hub_ip}/{settings.network.prefixlen}"
    interface.up(backend, files.wg_private_key, address, settings.wg_port, peers=[])
    undo.callback(interface.down)
    if settings.forward_between_peers:
        previous = read_sysctl("net.ipv4.ip_forward")
        write_sysctl("net.ipv4.ip_forward", "1")
        undo.callback(write_sysctl, "net.ipv4.ip_forward", previous)
    if settings.guard_underlay:
        guard.install(settings.interface, settings.overlay)
        undo.callback(guard.remove, settings.interface)
    return interface, backend.name


def start_redis(
    settings: HubSettings,
    files: HubFiles,
    interface: WireGuardInterface,
    undo: contextlib.AsyncExitStack,
) -> redis.Redis:
    """Redis on the overlay address, and the active members back on the interface."""
    password = files.redis_password
    server = RedisServer(
        settings.path / names.REDIS_DIR, settings.hub_ip, settings.redis_port, password
    )
    server.start()
    undo.callback(server.stop)
    client = store.connect(settings.hub_ip, settings.redis_port, password)
    undo.callback(client.close)
    for node in nodes.list_nodes(client):
        if node.state == nodes.ACTIVE:
            interface.add_peer(PeerConfig(node.wg_public_key, (f"{node.overlay_ip}/32",)))
    return client


async def start_web(settings: HubSettings, undo: contextlib.AsyncExitStack) -> None:
    """The web UI in a supervised child process (restarted whenever it dies)."""
    web = WebProcess(settings)
    await asyncio.to_thread(web.start)  # a web that fails to start is stopped by start()
    supervisor = asyncio.create_task(web.supervise())
    undo.callback(supervisor.cancel)
    undo.callback(web.stop)  # first: a stopping web is not restarted


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
        "Redis on %s:%d; pool on %s:%d; web on http://%s:%d",
        *(ip, settings.network.prefixlen, settings.interface, backend, settings.wg_port),
        *(settings.enroll_listen, ip, settings.redis_port, ip, settings.pool_port),
        *(ip, settings.web_port),
    )
