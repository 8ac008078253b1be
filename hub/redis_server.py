"""A real redis-server process owned by the hub (or by a test): bound to one address,
password required, AOF persistence on.

The hub starts it ``tied`` to itself (it gets SIGTERM, and so writes out its AOF, when the
hub dies) and restarts it from its AOF when it dies (hub/database.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.files import write_private
from hivemind_cluster.core.system import stop_process
from hivemind_cluster.hub.processes import ProcessIdentity, dies_with_parent, executable


class RedisServer:
    def __init__(
        self, data_dir: Path, bind: str, port: int, password: str, tied: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.bind = bind
        self.port = port
        self.password = password
        self.tied = tied  # dies with the thread that starts it (processes.dies_with_parent)
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        # appendfsync everysec: at most one second of writes is lost if the machine (not
        # the process) dies; a process crash loses nothing. See README "Redis".
        return (
            "\n".join(
                [
                    f"bind {self.bind}",
                    f"port {self.port}",
                    "protected-mode yes",
                    f'requirepass "{self.password}"',
                    f"dir {self.data_dir}",
                    "appendonly yes",
                    "appendfsync everysec",
                    "daemonize no",
                    "logfile redis.log",
                    "enable-debug-command no",
                    "save 300 1",
                ]
            )
            + "\n"
        )

    def start(self, timeout: float = 10.0) -> None:
        self.spawn()
        self.wait_until_ready(timeout)

    def spawn(self) -> None:
        """Start the process (without waiting for it to answer)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "redis.conf"
        write_private(conf, self.config())
        command = ["redis-server", str(conf)]
        try:
            self.process = subprocess.Popen(
                dies_with_parent(command) if self.tied else command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SystemFailure("redis-server is not installed (run `make setup`)") from None

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Until it answers PING (its AOF loaded); SystemFailure, and stopped, if it does not."""
        assert self.process is not None
        client = redis.Redis(
            host=self.bind, port=self.port, password=self.password, socket_connect_timeout=0.5
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                raise SystemFailure(f"redis-server exited at start: {' '.join(tail)}")
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    client.close()
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise SystemFailure(f"redis-server did not answer on {self.bind}:{self.port}")
            time.sleep(0.02)

    def exit_code(self) -> int | None:
        """None while it runs (or before it was started)."""
        return None if self.process is None else self.process.poll()

    def identity(self) -> ProcessIdentity | None:
        """How a later hub recognises this process if this one dies (hub/reclaim.py)."""
        if self.process is None:
            return None
        return ProcessIdentity.of(self.process.pid, executable("redis-server"))

    def stop(self) -> None:
        stop_process(self.process)
