"""``hivemind-hub init``: the hub's identity (CA, keys, server certificate, ``hub.toml``)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
from pathlib import Path

from hivemind_cluster.core import names
from hivemind_cluster.core.errors import AlreadyExists, InvalidInput
from hivemind_cluster.core.files import write_private, write_public
from hivemind_cluster.core.keys import generate_wireguard_keypair
from hivemind_cluster.core.settings import (
    DEFAULT_INTERFACE,
    DEFAULT_OVERLAY,
    DEFAULT_WG_PORT,
    ENROLL_PORT,
    HubSettings,
    dump,
    split_host_port,
)
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.wireguard import check_interface_name

# Appended to a new hub.toml: how to write an overlay policy (docs/mesh.md). Without one
# the default runs (`hivemind-hub policy show` prints it).
POLICY_EXAMPLE = """
# The overlay policy: who may open connections to whom (docs/mesh.md). Without any
# [[policy.allow]] the default runs: operators -> workers, everyone -> the hub's pool and
# web ports, ping for all; workers may not open connections to operators.
# [[policy.allow]]
# from = ["operator"]
# to = ["worker"]
# ports = ["tcp/22", "tcp/8000-8100"]
"""


def init_hub(
    state_dir: str,
    endpoint: str,
    overlay: str = DEFAULT_OVERLAY,
    wg_port: int = DEFAULT_WG_PORT,
    interface: str = DEFAULT_INTERFACE,
    force: bool = False,
    name: str = "",
) -> HubSettings:
    """Create the CA, the hub's WireGuard key, the server certificate and hub.toml."""
    root = Path(state_dir)
    if (root / names.HUB_CONFIG).exists() and not force:
        raise AlreadyExists(f"a hub already exists in {state_dir} (use --force to replace it)")
    host, port = split_host_port(endpoint, ENROLL_PORT)
    try:
        network = ipaddress.IPv4Network(overlay)
    except ValueError:
        raise InvalidInput(
            f"overlay {overlay!r} is not an IPv4 network like {DEFAULT_OVERLAY}"
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
        shutil.rmtree(root / names.REDIS_DIR, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    ca = CertificateAuthority.create()
    write_public(root / names.CA_CERT, ca.pem)
    write_private(root / names.CA_KEY, ca.key_pem)
    cert_pem, key_pem = ca.issue_server_certificate([host, settings.hub_ip])
    write_public(root / names.SERVER_CERT, cert_pem)
    write_private(root / names.SERVER_KEY, key_pem)
    private, public = generate_wireguard_keypair()
    write_private(root / names.WG_KEY, private + "\n")
    write_public(root / names.WG_PUB, public + "\n")
    write_private(root / names.REDIS_PASSWORD, secrets.token_urlsafe(32) + "\n")
    write_public(root / names.HUB_CONFIG, dump(settings) + POLICY_EXAMPLE)
    for stale in (names.HUB_CLIENT_CERT, names.HUB_CLIENT_KEY):
        (root / stale).unlink(missing_ok=True)  # from a replaced hub (--force)
    ensure_hub_client_certificate(settings, ca)
    return settings


def ensure_hub_client_certificate(settings: HubSettings, ca: CertificateAuthority) -> None:
    """The hub's own client identity for the pool (``hivemind-pool --identity <state dir>``)."""
    cert, key = settings.path / names.HUB_CLIENT_CERT, settings.path / names.HUB_CLIENT_KEY
    if cert.exists() and key.exists():
        return
    cert_pem, key_pem = ca.issue_client_certificate(names.HUB_NODE_ID, settings.hub_ip)
    write_private(key, key_pem)
    write_public(cert, cert_pem)
