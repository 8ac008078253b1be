"""A real Prometheus (Debian's ``prometheus``) in a lab host, scraping every second, and
queries through its HTTP API (from inside that host: it listens on the host's loopback)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.support.lab import Host
from tests.support.prerequisites import require

PORT = 9090
QUERY = """\
import sys, urllib.request
url = "http://127.0.0.1:%d/api/v1/" % int(sys.argv[1]) + sys.argv[2]
with urllib.request.urlopen(url, timeout=10) as answer:
    print(answer.read().decode())
"""


class Prometheus:
    def __init__(self, host: Host, workdir: Path, jobs: Mapping[str, Sequence[str]]) -> None:
        """``jobs``: job name -> its ``host:port`` targets (each scraped at /metrics)."""
        binary = shutil.which("prometheus")
        require(binary is not None, "prometheus is not installed (make setup)")
        assert binary is not None
        self.host = host
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in jobs.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        self.process = host.popen(
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{PORT}",
            log=self.log,
        )

    def api(self, path: str) -> Any:
        answer = self.host.run(sys.executable, "-c", QUERY, str(PORT), path, check=False)
        if answer.returncode != 0:
            return None
        return json.loads(answer.stdout)

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of ``expression`` (empty while Prometheus starts)."""
        found = self.api(f"query?query={quote(expression)}")
        if not found or found.get("status") != "success":
            return []
        result: list[dict[str, Any]] = found["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """The one value of ``expression`` (None: no series)."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self, expression: str, accept: Callable[[float | None], bool], timeout: float = 30
    ) -> float | None:
        """The value of ``expression`` once ``accept`` takes it; fails with the last one."""
        deadline = time.monotonic() + timeout
        while not accept(value := self.value(expression)):
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"{expression} stayed at {value}"
            time.sleep(0.5)
        return value

    def targets_up(self, jobs: Sequence[str], timeout: float = 60) -> None:
        for job in jobs:
            self.wait_for(f'up{{job="{job}"}}', lambda up: up == 1, timeout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except Exception:
            self.process.kill()
