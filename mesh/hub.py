"""The hub: ``init`` creates its identity, ``serve`` runs everything ``hivemind-hub up`` starts.

Every privileged change ``serve`` makes (interface, sysctl, nftables, Redis, servers) is
pushed on one exit stack, so a signal or a failure at any step undoes exactly the steps
done so far, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
from pathlib import Path

from hivemind_cluster.mesh import guard, nodes, store
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.enrollment import Enroller, create_server
from hivemind_cluster.mesh.errors import AlreadyExists, InvalidInput, NotFound, SystemFailure
from hivemind_cluster.mesh.keys import generate_wireguard_keypair, write_private, write_public
from hivemind_cluster.mesh.redis_server import RedisServer
from hivemind_cluster.mesh.settings import HUB_CONFIG, HubSettings, dump, load, split_host_port
from hivemind_cluster.mesh.system import read_sysctl, write_sysctl
from hivemind_cluster.mesh.wireguard import (
    PeerConfig,
    WireGuardInterface,
    check_interface_name,
    select_backend,
)
from hivemind_cluster.pool.auth import HUB_NODE_ID
from hivemind_cluster.pool.client import HUB_CLIENT_CERT, HUB_CLIENT_KEY
from hivemind_cluster.pool.pool import Pool
from hivemind_cluster.pool.service import create_server as create_pool_server

log = logging.getLogger(__name__)

WG_KEY = "wg.key"
WG_PUB = "wg.pub"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
RUN_FILE = "run.json"


def load_settings(state_dir: str) -> HubSettings:
    path = Path(state_dir) / HUB_CONFIG
    if not path.exists():
        raise NotFound(f"no hub in {state_dir} (create one with: hivemind-hub init)")
    return load(HubSettings, path, state_dir=state_dir)


def init_hub(
    state_dir: str,
    endpoint: str,
    overlay: str = "100.64.0.0/16",
    wg_port: int = 51820,
    interface: str = "hm0",
    force: bool = False,
    name: str = "",
) -> HubSettings:
    """Create the CA, the hub's WireGuard key, the server certificate and hub.toml."""
    root = Path(state_dir)
    if (root / HUB_CONFIG).exists() and not force:
        raise AlreadyExists(f"a hub already exists in {state_dir} (use --force to replace it)")
    host, port = split_host_port(endpoint, 7443)
    try:
        network = ipaddress.IPv4Network(overlay)
    except ValueError:
        raise InvalidInput(
            f"overlay {overlay!r} is not an IPv4 network like 100.64.0.0/16"
        ) from None
    if network.prefixlen > 29:
        raise InvalidInput("overlay network must be /29 or larger")
    if not 0 < wg_port < 65536:
        raise InvalidInput("--wg-port must be 1-65535")
    check_interface_name(interface)
    settings = HubSettings(
        state_dir=str(root),
        name=name,
        endpoint=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        enroll_listen=f"0.0.0.0:{port}",
        overlay=str(network),
        wg_port=wg_port,
        interface=interface,
    )
    if force:
        shutil.rmtree(root / "redis", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    ca = CertificateAuthority.create()
    write_public(root / CertificateAuthority.CERT_FILE, ca.pem)
    write_private(root / CertificateAuthority.KEY_FILE, ca.key_pem)
    cert_pem, key_pem = ca.issue_server_certificate([host, settings.hub_ip])
    write_public(root / SERVER_CERT, cert_pem)
    write_private(root / SERVER_KEY, key_pem)
    private, public = generate_wireguard_keypair()
    write_private(root / WG_KEY, private + "\n")
    write_public(root / WG_PUB, public + "\n")
    write_private(root / store.PASSWORD_FILE, secrets.token_urlsafe(32) + "\n")
    write_public(root / HUB_CONFIG, dump(settings))
    for stale in (HUB_CLIENT_CERT, HUB_CLIENT_KEY):
        (root / stale).unlink(missing_ok=True)  # from a replaced hub (--force)
    ensure_hub_client_certificate(settings, ca)
    return settings


def read_run_file(settings: HubSettings) -> dict[str, object] | None:
    """What the running hub published about itself, or None when it is not up."""
    try:
        data: dict[str, object] = json.loads((settings.path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
        return None
    return data


async def serve(settings: HubSettings, backend_name: str = "auto") -> None:
    """Run the hub until SIGTERM/SIGINT, then undo everything."""
    root = settings.path
    if read_run_file(settings) is not None:
        raise AlreadyExists(f"a hub is already running from {settings.state_dir}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ca = CertificateAuthority.load(root)
    private_key = (root / WG_KEY).read_text().strip()
    password = (root / store.PASSWORD_FILE).read_text().strip()
    backend = select_backend(backend_name)
    interface = WireGuardInterface(settings.interface)
    if interface.exists():
        raise SystemFailure(
            f"interface {settings.interface} already exists "
            "(another hub running, or left over: `ip link delete` it)"
        )
    with contextlib.ExitStack() as undo:
        interface.up(
            backend,
            private_key,
            f"{settings.hub_ip}/{settings.network.prefixlen}",
            settings.wg_port,
            peers=[],
        )
        undo.callback(interface.down)
        if settings.forward_between_peers:
            previous = read_sysctl("net.ipv4.ip_forward")
            write_sysctl("net.ipv4.ip_forward", "1")
            undo.callback(write_sysctl, "net.ipv4.ip_forward", previous)
        if settings.guard_underlay:
            guard.install(settings.interface, settings.overlay)
            undo.callback(guard.remove, settings.interface)
        redis_server = RedisServer(root / "redis", settings.hub_ip, settings.redis_port, password)
        redis_server.start()
        undo.callback(redis_server.stop)
        client = store.connect(settings.hub_ip, settings.redis_port, password)
        undo.callback(client.close)
        for node in nodes.list_nodes(client):
            if node.state == nodes.ACTIVE:
                interface.add_peer(PeerConfig(node.wg_public_key, (f"{node.overlay_ip}/32",)))
        enroller = Enroller(settings, ca, client, interface, (root / WG_PUB).read_text().strip())
        server_cert = (root / SERVER_CERT).read_bytes() + ca.pem
        server_key = (root / SERVER_KEY).read_bytes()
        server, port = await create_server(
            enroller, settings.enroll_listen, server_cert, server_key
        )
        pool_server = pool = web_supervisor = None
        from hivemind_cluster.web.server import WebProcess  # Flask only where the hub runs

        web = WebProcess(settings)
        try:
            ensure_hub_client_certificate(settings, ca)
            pool = await Pool.open(settings, password)
            pool_server, _ = await create_pool_server(
                pool, settings.pool_address, server_cert, server_key, ca.pem
            )
            await asyncio.to_thread(web.start)
            web_supervisor = asyncio.create_task(web.supervise())
            write_public(
                root / RUN_FILE,
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "backend": backend.name,
                        "interface": settings.interface,
                        "hub_ip": settings.hub_ip,
                        "enroll_port": port,
                        "pool_address": settings.pool_address,
                        "web_url": f"http://{settings.hub_ip}:{settings.web_port}",
                    }
                ),
            )
            log.info(
                "hub up: %s/%d on %s (%s WireGuard, port %d); enrollment on %s; "
                "Redis on %s:%d; pool on %s:%d; web on http://%s:%d",
                settings.hub_ip,
                settings.network.prefixlen,
                settings.interface,
                backend.name,
                settings.wg_port,
                settings.enroll_listen,
                settings.hub_ip,
                settings.redis_port,
                settings.hub_ip,
                settings.pool_port,
                settings.hub_ip,
                settings.web_port,
            )
            await stop.wait()
            log.info("hub stopping")
        finally:
            (root / RUN_FILE).unlink(missing_ok=True)
            web.stop()
            if web_supervisor is not None:
                web_supervisor.cancel()
            if pool_server is not None:
                await pool_server.stop(grace=2)
            if pool is not None:
                await pool.close()
            await server.stop(grace=2)


def ensure_hub_client_certificate(settings: HubSettings, ca: CertificateAuthority) -> None:
    """The hub's own client identity for the pool (``hivemind --identity <state dir>``)."""
    cert, key = settings.path / HUB_CLIENT_CERT, settings.path / HUB_CLIENT_KEY
    if cert.exists() and key.exists():
        return
    cert_pem, key_pem = ca.issue_client_certificate(HUB_NODE_ID, settings.hub_ip)
    write_private(key, key_pem)
    write_public(cert, cert_pem)
