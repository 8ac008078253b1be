"""``hivemind-agent run``: the long-lived agent service.

It owns the WireGuard interface while it runs: it brings it up from saved state (after a
reboot, say), recreates it if it disappears, and removes it when stopped. On a worker it
also runs the pool ``Worker`` (agent/worker.py) in a thread of its own, and on every node
the peer stream (``PeerSync``, agent/peers.py: the other members as WireGuard peers, direct
or through the hub, and the overlay policy's nftables table) on a thread of its own and the
local status page (agent/statuspage.py, ``status_listen``, default 127.0.0.1:5000).
A worker's nftables table keeping tasks with network off the overlay (agent/tasknet.py) is
loaded before the worker takes a task and removed after it has stopped. Its state directory
holds ``work/`` (tasks' disks), ``cache/inputs/`` (inputs by digest, agent/inputs.py) and
``results/`` (result zips until sent, agent/results.py).

Signals: the first SIGTERM/SIGINT drains the worker (running tasks get ``drain_seconds``),
a second one stops it at once; the interface goes down when the worker has stopped, after
the peer stream has taken its peers and policy table away.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from hivemind_cluster.agent.facts import worker_facts
from hivemind_cluster.agent.inputsources import UrlSource
from hivemind_cluster.agent.overlay import bring_up, hub_answers
from hivemind_cluster.agent.paths import PathKeeper
from hivemind_cluster.agent.peers import Keeper, PeerSync
from hivemind_cluster.agent.results import remove_leftovers as remove_result_leftovers
from hivemind_cluster.agent.state import AgentSettings, Enrollment
from hivemind_cluster.agent.statusserver import start_status_server
from hivemind_cluster.agent.tasknet import (
    GuardedExecutor,
    TaskNetworkGuard,
    remove_task_network_rules,
)
from hivemind_cluster.agent.transfers import Transfers
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.core.errors import AlreadyExists
from hivemind_cluster.core.files import write_public
from hivemind_cluster.core.keys import wireguard_public_key
from hivemind_cluster.core.names import PID_FILE, WG_KEY
from hivemind_cluster.mesh import policyrules
from hivemind_cluster.mesh.wireguard import WireGuardInterface

log = logging.getLogger("hivemind.agent")
CHECK_INTERVAL = 1.0
# Probe the hub this often; after two silent probes, force a fresh WireGuard handshake
# (a restarted hub has forgotten our session, and WireGuard alone waits up to ~2 minutes).
PROBE_EVERY = 5


def run_service(settings: AgentSettings, stop: threading.Event | None = None) -> None:
    """Run until ``stop`` is set (or, on a worker, until the worker has stopped)."""
    enrollment = Enrollment.load(settings.path)
    refuse_a_second_service(settings)
    stop = stop or threading.Event()
    worker = make_worker(settings, enrollment) if enrollment.role == "worker" else None
    if threading.current_thread() is threading.main_thread():
        handle_signals(worker, stop)
    pid_file = settings.path / PID_FILE
    peer_sync = make_peer_sync(settings, enrollment)
    overlay = OverlayKeeper(settings, enrollment, peer_sync.interface_recreated)
    write_public(pid_file, str(os.getpid()))
    log.info(
        "agent %s (%s) up at %s on %s",
        enrollment.node_id,
        enrollment.name,
        enrollment.overlay_ip,
        enrollment.interface,
    )
    worker_thread = start_worker(worker, stop) if worker is not None else None
    status_server = None
    try:
        peer_sync.start()
        status_server = start_status_server(
            settings.status_listen, enrollment, worker, settings.path
        )
        while not stop.wait(CHECK_INTERVAL):
            overlay.check()
    finally:
        if status_server is not None:
            status_server.stop()
        if worker is not None and worker_thread is not None:
            worker.halt()
            worker_thread.join(timeout=15)
            remove_task_network_rules(enrollment.interface)
        stop_peer_sync(peer_sync, enrollment.interface)
        pid_file.unlink(missing_ok=True)
        overlay.interface.down()
        log.info("agent stopped; interface %s removed", overlay.interface.name)


def refuse_a_second_service(settings: AgentSettings) -> None:
    """Two services would fight over one interface and one pool stream."""
    from hivemind_cluster.agent.join import service_pid

    other = service_pid(settings)
    if other is not None and other != os.getpid():
        raise AlreadyExists(f"the agent service already runs (pid {other})")


def handle_signals(worker: Worker | None, stop: threading.Event) -> None:
    """SIGTERM/SIGINT: the first drains the worker, a second halts it (no worker: stop)."""
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if worker is None:
            log.info("signal %d: stopping", signum)
            stop.set()
        elif signals == 1:
            log.info("signal %d: draining (a second signal stops at once)", signum)
            worker.drain()
        else:
            log.info("signal %d: stopping now", signum)
            worker.halt()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


class OverlayKeeper:
    """Brings the interface up and, checked every CHECK_INTERVAL, keeps it so: recreates it
    when it disappears, and forces a new handshake when the hub stops answering."""

    def __init__(
        self,
        settings: AgentSettings,
        enrollment: Enrollment,
        recreated: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.enrollment = enrollment
        self.recreated = recreated  # told when the interface came back (with no peers)
        self.interface = bring_up(settings, enrollment)
        self.ticks = 0
        self.silent_probes = 0

    def check(self) -> None:
        self.ticks += 1
        if not self.interface.exists():
            log.warning("interface %s disappeared; bringing it up again", self.interface.name)
            self.interface = bring_up(self.settings, self.enrollment)
            self.recreated()
        if self.ticks % PROBE_EVERY == 0:
            self.probe_hub()

    def probe_hub(self) -> None:
        enrollment = self.enrollment
        if hub_answers(enrollment.hub_ip, enrollment.pool_port):
            self.silent_probes = 0
            return
        self.silent_probes += 1
        if self.silent_probes >= 2:
            log.warning("hub %s is not answering; forcing a new handshake", enrollment.hub_ip)
            self.interface.reset_peer(enrollment.hub_peer)
            self.silent_probes = 0


def make_peer_sync(settings: AgentSettings, enrollment: Enrollment) -> PeerSync:
    """The peer stream, its keeper on the service's interface (the hub peer untouched,
    and never a peer with this device's own key or address)."""
    own_public_key = wireguard_public_key((settings.path / WG_KEY).read_text().strip())

    def keeper(keepalive: int) -> Keeper:
        return PathKeeper(
            WireGuardInterface(enrollment.interface),
            enrollment.hub_public_key,
            keepalive,
            own_public_key=own_public_key,
            own_address=enrollment.address,
            hub_ip=enrollment.hub_ip,
        )

    return PeerSync(settings, enrollment, Identity.load(settings.path), keeper)


def stop_peer_sync(
    peer_sync: PeerSync,
    interface: str,
    remove_policy: Callable[[str], None] = policyrules.remove,
) -> None:
    """Stop the peer stream, which takes its peers and policy table away; if it is stuck
    (a hanging ``nft``, say), take the table away here (removing it twice is harmless).
    The peers go with the interface."""
    if not peer_sync.stop():
        log.warning("the peer stream did not stop in time; removing the policy table")
        remove_policy(interface)


def start_worker(worker: Worker, stop: threading.Event) -> threading.Thread:
    """The pool worker on a thread of its own; ``stop`` is set when it ends."""
    thread = threading.Thread(
        target=_run_worker, args=(worker, stop), name="pool-worker", daemon=True
    )
    thread.start()
    return thread


def make_worker(settings: AgentSettings, enrollment: Enrollment) -> Worker:
    from hivemind_cluster.agent.executor import DockerExecutor
    from hivemind_cluster.agent.requirements import Requirements

    facts = worker_facts(settings.cpus, settings.memory, settings.labels)
    requirements = Requirements(
        settings.path / "requirements",
        settings.package_index_url,
        settings.requirements_cache_bytes,
    )
    transfers = Transfers(
        settings.path, settings.input_cache_bytes, UrlSource.for_overlay(enrollment.address)
    )
    remove_result_leftovers(transfers.results_root)
    executor = DockerExecutor(
        settings.path / "work",
        enrollment.node_id,
        requirements=requirements,
        results_root=transfers.results_root,
    )
    if facts.docker_available:
        removed = executor.remove_leftovers()
        if removed:
            log.info("removed %d containers left by an earlier run", removed)
    else:
        log.warning("Docker is not available (%s): tasks will fail", facts.docker_version)
    # Before the worker takes a task: a task with network must never reach the overlay.
    network_guard = TaskNetworkGuard(enrollment, executor.client)
    network_guard.install()
    guarded = GuardedExecutor(executor, network_guard)
    identity = Identity.load(settings.path)
    return Worker(identity, guarded, facts, settings.drain_seconds, transfers)


def _run_worker(worker: Worker, stop: threading.Event) -> None:
    try:
        worker.run_forever()
    except Exception:
        log.exception("the pool worker failed")
    finally:
        stop.set()
