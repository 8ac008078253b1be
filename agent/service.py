"""``hivemind-agent run``: the long-lived agent service.

It owns the WireGuard interface while it runs: it brings it up from saved state (after a
reboot, say), recreates it if it disappears, and removes it when stopped. On a worker it
also runs the pool ``Worker`` (agent/worker.py) in a thread of its own, and on every node
the local status page (agent/statuspage.py, ``status_listen``, default 127.0.0.1:5000).

Signals: the first SIGTERM/SIGINT drains the worker (running tasks get ``drain_seconds``),
a second one stops it at once; the interface goes down when the worker has stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from hivemind_cluster.agent.facts import worker_facts
from hivemind_cluster.agent.overlay import bring_up, hub_answers
from hivemind_cluster.agent.state import AgentSettings, Enrollment
from hivemind_cluster.agent.statuspage import start_status_server
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.core.errors import AlreadyExists
from hivemind_cluster.core.keys import write_public
from hivemind_cluster.core.names import PID_FILE

log = logging.getLogger("hivemind.agent")
CHECK_INTERVAL = 1.0
# Probe the hub this often; after two silent probes, force a fresh WireGuard handshake
# (a restarted hub has forgotten our session, and WireGuard alone waits up to ~2 minutes).
PROBE_EVERY = 5


def run_service(settings: AgentSettings, stop: threading.Event | None = None) -> None:
    from hivemind_cluster.agent.join import service_pid

    enrollment = Enrollment.load(settings.path)
    other = service_pid(settings)
    if other is not None and other != os.getpid():
        raise AlreadyExists(f"the agent service already runs (pid {other})")
    stop = stop or threading.Event()
    worker = make_worker(settings, enrollment) if enrollment.role == "worker" else None
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

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    pid_file = settings.path / PID_FILE
    interface = bring_up(settings, enrollment)
    write_public(pid_file, str(os.getpid()))
    log.info(
        "agent %s (%s) up at %s on %s",
        enrollment.node_id,
        enrollment.name,
        enrollment.overlay_ip,
        enrollment.interface,
    )
    ticks = silent_probes = 0
    worker_thread = None
    if worker is not None:
        worker_thread = threading.Thread(
            target=_run_worker, args=(worker, stop), name="pool-worker", daemon=True
        )
        worker_thread.start()
    status_server = None
    try:
        status_server = start_status_server(
            settings.status_listen, enrollment, worker, settings.path
        )
        while not stop.wait(CHECK_INTERVAL):
            ticks += 1
            if not interface.exists():
                log.warning("interface %s disappeared; bringing it up again", interface.name)
                interface = bring_up(settings, enrollment)
            if ticks % PROBE_EVERY:
                continue
            if hub_answers(enrollment.hub_ip, enrollment.pool_port):
                silent_probes = 0
                continue
            silent_probes += 1
            if silent_probes >= 2:
                log.warning("hub %s is not answering; forcing a new handshake", enrollment.hub_ip)
                interface.reset_peer(enrollment.hub_peer)
                silent_probes = 0
    finally:
        if status_server is not None:
            status_server.stop()
        if worker is not None and worker_thread is not None:
            worker.halt()
            worker_thread.join(timeout=15)
        pid_file.unlink(missing_ok=True)
        interface.down()
        log.info("agent stopped; interface %s removed", interface.name)


def make_worker(settings: AgentSettings, enrollment: Enrollment) -> Worker:
    from hivemind_cluster.agent.executor import DockerExecutor

    facts = worker_facts(settings.cpus, settings.memory, settings.labels)
    executor = DockerExecutor(settings.path / "work", enrollment.node_id)
    if facts.docker_available:
        removed = executor.remove_leftovers()
        if removed:
            log.info("removed %d containers left by an earlier run", removed)
    else:
        log.warning("Docker is not available (%s): tasks will fail", facts.docker_version)
    return Worker(Identity.load(settings.path), executor, facts, settings.drain_seconds)


def _run_worker(worker: Worker, stop: threading.Event) -> None:
    try:
        worker.run_forever()
    except Exception:
        log.exception("the pool worker failed")
    finally:
        stop.set()
