"""Serving the web UI: ``hivemind-hub web`` (waitress, on the hub's overlay address only)
and ``WebProcess``, with which ``hivemind-hub up`` starts it and restarts it if it dies.

The web runs in its own process so that page rendering never competes with the pool's
event loop for the GIL; it reaches the pool over gRPC like any other client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from hivemind_cluster.mesh.errors import SystemFailure
from hivemind_cluster.mesh.settings import HubSettings
from hivemind_cluster.mesh.system import stop_process

log = logging.getLogger("hivemind.web")
LOG_FILE = "web.log"
THREADS = 8
RESTART_DELAY = (1.0, 30.0)  # first and longest pause before restarting a crashed web
PARENT_ENV = "HIVEMIND_WEB_PARENT"


def serve(settings: HubSettings) -> None:
    """Run the web UI in the foreground until killed."""
    import waitress

    from hivemind_cluster.web import create_app

    app = create_app({"STATE_DIR": settings.state_dir})
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        threading.Thread(target=_exit_with_parent, args=(int(parent),), daemon=True).start()
    log.info("web UI on http://%s:%d", settings.hub_ip, settings.web_port)
    waitress.serve(
        app, host=settings.hub_ip, port=settings.web_port, threads=THREADS, ident="hivemind"
    )


def _exit_with_parent(parent: int) -> None:
    """Started by ``up`` in a session of its own: leave when the hub is gone (even kill -9)."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class WebProcess:
    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hivemind_cluster.mesh.cli",
            "web",
            "--state-dir",
            self.settings.state_dir,
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it answers on its port."""
        logfile = open(Path(self.settings.state_dir) / LOG_FILE, "ab")  # noqa: SIM115
        with logfile:
            self.process = subprocess.Popen(
                self.command,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C is for `up`, which stops it
                env={**os.environ, PARENT_ENV: str(os.getpid())},
            )
        deadline = time.monotonic() + timeout
        while not answers(self.settings.hub_ip, self.settings.web_port):
            if self.process.poll() is not None:
                raise SystemFailure(
                    f"the web UI exited at start (code {self.process.returncode}); "
                    f"see {Path(self.settings.state_dir) / LOG_FILE}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise SystemFailure(
                    f"the web UI did not answer on {self.settings.hub_ip}:{self.settings.web_port}"
                )
            time.sleep(0.05)

    async def supervise(self) -> None:
        """Restart the web whenever it exits, with a growing pause (until ``stop``)."""
        delay = RESTART_DELAY[0]
        while not self.stopping:
            await asyncio.sleep(0.5)
            if self.process is None or self.process.poll() is None or self.stopping:
                continue
            log.warning("the web UI exited (code %s); restarting", self.process.returncode)
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self.start)
                delay = RESTART_DELAY[0]
            except SystemFailure as exc:
                log.error("%s", exc.message)
                delay = min(delay * 2, RESTART_DELAY[1])

    def stop(self) -> None:
        self.stopping = True
        stop_process(self.process)
