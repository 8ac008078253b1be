"""``WebProcess``: how ``hivemind-hub up`` starts the web UI (``hivemind-hub web``) in a
process of its own; ``up`` restarts it whenever it dies (hub/supervisor.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.names import WEB_LOG, WEB_METRICS_DIR, WEB_PARENT_ENV
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.system import stop_process
from hivemind_cluster.hub.processes import ProcessIdentity, dies_with_parent, executable

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client at import


def answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class WebProcess:
    """The web child; a supervisor's ``Child`` (``exit_code``, ``restart``)."""

    name = "the web UI"

    def __init__(
        self,
        settings: HubSettings,
        started: Callable[[ProcessIdentity | None], None] = lambda identity: None,
    ) -> None:
        self.settings = settings
        self.started = started  # told each new process (the hub notes it in up.json)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_hint = str(settings.path / WEB_LOG)

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

    async def start(self) -> None:
        """Start it (from the event loop's thread, see ``dies_with_parent``) and wait until
        it answers on its port."""
        self.spawn()
        await asyncio.to_thread(self.wait_until_answering)

    async def restart(self) -> None:
        await self.start()

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def metrics_env(self) -> dict[str, str]:
        """prometheus-client's multiprocess mode: the child's figures as files the hub's
        /metrics reads (hub/metrics.py); none when the hub serves no metrics."""
        if not self.settings.metrics_port:
            return {}
        return {MULTIPROC_ENV: str(self.settings.path / WEB_METRICS_DIR)}

    def spawn(self) -> None:
        logfile = open(self.settings.path / WEB_LOG, "ab")  # noqa: SIM115
        with logfile:
            self.process = subprocess.Popen(
                dies_with_parent(self.command),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C is for `up`, which stops it
                env={**os.environ, WEB_PARENT_ENV: str(os.getpid()), **self.metrics_env},
            )
        self.started(ProcessIdentity.of(self.process.pid, executable(sys.executable)))

    def wait_until_answering(self, timeout: float = 20.0) -> None:
        """SystemFailure (and stopped) if it exits or does not answer within ``timeout``."""
        assert self.process is not None
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

    def stop(self) -> None:
        stop_process(self.process)
