"""``hivemind-agent run``: the long-lived agent service.

It owns the WireGuard interface while it runs: it brings it up from saved state (after a
reboot, say), recreates it if it disappears, and removes it when stopped. Registration,
heartbeats and task execution join this loop with the pool.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from hivemind_cluster.agent.overlay import bring_up, hub_answers
from hivemind_cluster.agent.state import PID_FILE, AgentSettings, Enrollment
from hivemind_cluster.mesh.errors import AlreadyExists
from hivemind_cluster.mesh.keys import write_public

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

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

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
    try:
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
        pid_file.unlink(missing_ok=True)
        interface.down()
        log.info("agent stopped; interface %s removed", interface.name)
