"""``join``, ``leave`` and ``status``: an agent's membership of the overlay."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hivemind_cluster.agent import enroll as enroll_client
from hivemind_cluster.agent.facts import hardware_facts
from hivemind_cluster.agent.overlay import bring_up, hub_answers, wait_until_hub_answers
from hivemind_cluster.agent.peerview import (
    hub_status,
    interface_peers,
    known_peers,
    known_revision,
    peer_rows,
)
from hivemind_cluster.agent.state import AgentSettings, Enrollment
from hivemind_cluster.agent.statusserver import configured_url
from hivemind_cluster.core.errors import HiveMindError, SystemFailure, Unavailable
from hivemind_cluster.core.files import write_private, write_public
from hivemind_cluster.core.keys import (
    TlsKey,
    build_csr,
    generate_tls_key,
    generate_wireguard_keypair,
    load_tls_key,
    private_key_pem,
)
from hivemind_cluster.core.names import CA_CERT, LOG_FILE, NODE_CERT, PID_FILE, TLS_KEY, WG_KEY
from hivemind_cluster.mesh import policyrules
from hivemind_cluster.mesh.ca import check_hostname
from hivemind_cluster.mesh.tokens import JoinToken
from hivemind_cluster.mesh.wireguard import (
    WireGuardInterface,
    check_interface_name,
    render_quick_config,
    select_backend,
)
from hivemind_cluster.protos import enrollment_pb2 as pb


def join(
    settings: AgentSettings, token_text: str, name: str | None = None, start_service: bool = True
) -> tuple[Enrollment, bool]:
    """Enroll (unless enrolled already), bring the overlay up, start the service and wait
    until the hub answers over the overlay. Returns ``(enrollment, newly_enrolled)``."""
    if Enrollment.exists(settings.path):
        return come_back_up(settings, start_service), False
    token = JoinToken.parse(token_text)
    hostname = check_hostname(name or socket.gethostname())
    backend = check_this_machine_can_join(settings)
    endpoint, ca_pem = _pinned_endpoint(token)
    wg_private, wg_public = generate_wireguard_keypair()
    tls_key = generate_tls_key()
    response = enroll_client.enroll(
        endpoint, ca_pem, enroll_request(token, hostname, wg_public, tls_key)
    )
    enrollment = enrollment_from(response, settings, hostname, endpoint, backend)
    save_credentials(settings, enrollment, wg_private, tls_key, response.certificate_pem, ca_pem)
    enrollment.save(settings.path)
    come_up_and_reach_the_hub(settings, enrollment, start_service)
    return enrollment, True


def come_back_up(settings: AgentSettings, start_service: bool) -> Enrollment:
    """An enrolled machine joins again by bringing up what it saved (no token is spent)."""
    enrollment = Enrollment.load(settings.path)
    bring_up(settings, enrollment)
    if start_service:
        ensure_service(settings)
    return enrollment


def check_this_machine_can_join(settings: AgentSettings) -> str:
    """The WireGuard backend to use, checked before the token is spent: a machine that
    cannot run WireGuard (or whose interface name is taken) uses nothing."""
    check_interface_name(settings.interface)
    backend = select_backend(settings.backend)
    if WireGuardInterface(settings.interface).exists():
        raise SystemFailure(
            f"interface {settings.interface} already exists; choose another with --interface"
        )
    return backend.name


def enroll_request(
    token: JoinToken, hostname: str, wg_public: str, tls_key: TlsKey
) -> pb.EnrollRequest:
    return pb.EnrollRequest(
        token_id=token.token_id,
        token_secret=token.secret,
        wireguard_public_key=wg_public,
        csr_pem=build_csr(tls_key, hostname),
        hostname=hostname,
        facts=hardware_facts(),
    )


def enrollment_from(
    response: pb.EnrollResponse,
    settings: AgentSettings,
    hostname: str,
    endpoint: str,
    backend: str,
) -> Enrollment:
    """What the agent keeps of the hub's answer (and of how it joined)."""
    return Enrollment(
        node_id=response.node_id,
        name=hostname,
        role=response.role,
        overlay_ip=response.overlay_ip,
        overlay_prefix=response.overlay_prefix,
        hub_ip=response.hub_overlay_ip,
        hub_public_key=response.hub.public_key,
        hub_endpoint=response.hub.endpoint,
        hub_allowed_ips=tuple(response.hub.allowed_ips),
        persistent_keepalive=response.hub.persistent_keepalive,
        pool_address=response.pool_address,
        enroll_endpoint=endpoint,
        interface=settings.interface,
        backend=backend,
        enrolled_at=time.time(),
    )


def save_credentials(
    settings: AgentSettings,
    enrollment: Enrollment,
    wg_private: str,
    tls_key: TlsKey,
    certificate_pem: bytes,
    ca_pem: bytes,
) -> None:
    """Keys, certificates and the WireGuard config, in a directory only root can read."""
    root = settings.path
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    write_private(root / WG_KEY, wg_private + "\n")
    write_private(root / TLS_KEY, private_key_pem(tls_key))
    write_public(root / NODE_CERT, certificate_pem)
    write_public(root / CA_CERT, ca_pem)
    write_private(
        root / f"{settings.interface}.conf",
        render_quick_config(
            wg_private,
            enrollment.address,
            [enrollment.hub_peer],
            comment=(
                f"HiveMind node {enrollment.node_id} ({enrollment.name}); managed by hivemind-agent"
            ),
        ),
    )


def come_up_and_reach_the_hub(
    settings: AgentSettings, enrollment: Enrollment, start_service: bool
) -> None:
    """Bring the overlay up and wait until the hub answers through it."""
    bring_up(settings, enrollment)
    # The service starts (a second or so of Python imports) while the handshake happens.
    service = spawn_service(settings) if start_service else None
    if not wait_until_hub_answers(enrollment, settings.join_timeout):
        raise Unavailable(
            f"enrolled as {enrollment.node_id} at {enrollment.overlay_ip}, but the hub does not "
            f"answer over the overlay after {settings.join_timeout}s (is UDP "
            f"{enrollment.hub_endpoint} reachable?); `hivemind-agent status` shows the tunnel"
        )
    if service is not None:
        confirm_service(settings, service)


def _pinned_endpoint(token: JoinToken) -> tuple[str, bytes]:
    """The first endpoint of the token that presents the pinned CA."""
    failure: HiveMindError | None = None
    for endpoint in token.endpoints:
        try:
            return endpoint, enroll_client.fetch_pinned_ca(endpoint, token.ca_pin)
        except Unavailable as exc:
            failure = exc
    assert failure is not None
    raise failure


def service_pid(settings: AgentSettings) -> int | None:
    try:
        pid = int((settings.path / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return None if is_zombie(pid) else pid


def is_zombie(pid: int) -> bool:
    """A process that has died but not been reaped yet (``kill(pid, 0)`` still succeeds on
    it): after a crash its parent may take a moment to reap it, and it serves nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def ensure_service(settings: AgentSettings) -> int:
    """Start ``hivemind-agent run`` in the background unless it runs already."""
    return confirm_service(settings, spawn_service(settings))


def spawn_service(settings: AgentSettings) -> subprocess.Popen[bytes] | int:
    """Launch the service without waiting for it; returns the process (or a running pid)."""
    pid = service_pid(settings)
    if pid is not None:
        return pid
    with open(settings.path / LOG_FILE, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hivemind_cluster.agent.cli",
                "run",
                "--state-dir",
                settings.state_dir,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def confirm_service(settings: AgentSettings, process: subprocess.Popen[bytes] | int) -> int:
    """Wait until a spawned service has written its pid file."""
    if isinstance(process, int):
        return process
    deadline = time.monotonic() + 10
    while service_pid(settings) != process.pid:
        if process.poll() is not None:
            raise SystemFailure(
                f"the agent service exited at start; see {settings.path / LOG_FILE}"
            )
        if time.monotonic() > deadline:
            raise SystemFailure("the agent service did not start within 10 s")
        time.sleep(0.02)
    return process.pid


def stop_service(settings: AgentSettings, timeout: float = 10.0) -> None:
    pid = service_pid(settings)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while service_pid(settings) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if service_pid(settings) is not None:
        os.kill(pid, signal.SIGKILL)


def leave(settings: AgentSettings) -> dict[str, Any]:
    """Deregister, stop the service, remove the interface and the state directory."""
    root = settings.path
    enrollment = Enrollment.load(root)
    deregistered, warning = True, ""
    try:
        enroll_client.leave(
            enrollment.enroll_endpoint,
            (root / CA_CERT).read_bytes(),
            enrollment.node_id,
            load_tls_key((root / TLS_KEY).read_bytes()),
        )
    except HiveMindError as exc:
        deregistered, warning = False, exc.message
    stop_service(settings)
    policyrules.remove(enrollment.interface)  # a service that died may have left it
    WireGuardInterface(enrollment.interface).down()
    shutil.rmtree(root)
    return {"node_id": enrollment.node_id, "deregistered": deregistered, "warning": warning}


def status(settings: AgentSettings, probe: bool = True) -> dict[str, Any]:
    """Identity, the hub peer and every other peer (its path: direct or relayed), from
    one ``wg show`` and the service's ``peers.json``."""
    enrollment = Enrollment.load(settings.path)
    wireguard = interface_peers(enrollment.interface)
    peer = hub_status(wireguard, enrollment.hub_public_key)
    known = known_peers(settings.path)
    return {
        "node_id": enrollment.node_id,
        "name": enrollment.name,
        "role": enrollment.role,
        "overlay_ip": enrollment.overlay_ip,
        "hub_ip": enrollment.hub_ip,
        "interface": enrollment.interface,
        "backend": enrollment.backend,
        "interface_up": peer is not None,
        "last_handshake": peer.latest_handshake or None if peer else None,
        "rx_bytes": peer.rx_bytes if peer else 0,
        "tx_bytes": peer.tx_bytes if peer else 0,
        "hub_endpoint": enrollment.hub_endpoint,
        "service_pid": service_pid(settings),
        "hub_reachable": bool(
            peer and probe and hub_answers(enrollment.hub_ip, enrollment.pool_port)
        ),
        "state_dir": str(Path(settings.state_dir).resolve()),
        # Where the running service serves its status page (None: turned off).
        "status_page": configured_url(settings.status_listen),
        # The peers as the service last applied them (revision 0: not yet).
        "peers_revision": known_revision(known),
        "peers": [row.to_json() for row in peer_rows(known, wireguard)],
    }
