"""``WebProcess``: how ``hivemind-hub up`` starts the web UI (``hivemind-hub web``) in a
process of its own, and restarts it whenever it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time

from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.names import WEB_LOG, WEB_PARENT_ENV
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.system import stop_process

log = logging.getLogger("hivemind.web")
RESTART_DELAY = (1.0, 30.0)  # first and longest pause before restarting a crashed web


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
            "hivemind_cluster.hub.cli",
            "web",
            "--state-dir",
            self.settings.state_dir,
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it answers on its port."""
        logfile = open(self.settings.path / WEB_LOG, "ab")  # noqa: SIM115
        with logfile:
            self.process = subprocess.Popen(
                self.command,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C is for `up`, which stops it
                env={**os.environ, WEB_PARENT_ENV: str(os.getpid())},
            )
        deadline = time.monotonic() + timeout
        while not answers(self.settings.hub_ip, self.settings.web_port):
            if self.process.poll() is not None:
                raise SystemFailure(
                    f"the web UI exited at start (code {self.process.returncode}); "
                    f"see {self.settings.path / WEB_LOG}"
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
