"""What bench/metrics.py (and bench/heartbeat_lab.py's pool, with ``metrics``) run the hub's
``/metrics`` with: the real ``HubMetrics`` and ``HubCollector`` (hub/metrics.py) over a real
``Pool``, a distributor holding ``members`` simulated members (not started: no Redis
traffic of its own), a WireGuard interface, and a scraper thread that asks for
``/metrics`` every ``interval`` seconds, as Prometheus would, timing each scrape."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hivemind_cluster.core.keys import generate_wireguard_keypair
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.metrics import HubCollector, HubMetrics
from hivemind_cluster.mesh.peering import PeerDistributor
from hivemind_cluster.mesh.peermembers import Member
from hivemind_cluster.mesh.wireguard import PeerStatus, WireGuardInterface, select_backend, wg
from hivemind_cluster.pool.pool import Pool

BENCH_INTERFACE = "hmbench0"
BENCH_ADDRESS = "100.99.0.1/16"  # on an interface of its own, with no route anywhere else


def member_ip(index: int) -> str:
    return f"100.99.{1 + index // 250}.{1 + index % 250}"


def simulated_members(count: int, keys: list[str] | None = None) -> dict[str, Member]:
    """``count`` worker members, ``agent0000``…, as the distributor holds them."""
    return {
        f"agent{i:04d}": Member(
            f"agent{i:04d}",
            f"agent-{i}",
            "worker",
            keys[i] if keys else f"key-{i:04d}",
            member_ip(i),
        )
        for i in range(count)
    }


class ListedPeers(WireGuardInterface):
    """An interface whose ``wg show`` is a fixed list (no interface is made)."""

    def __init__(self, peers: list[PeerStatus]) -> None:
        super().__init__(BENCH_INTERFACE)
        self.listed = peers

    def peers(self) -> list[PeerStatus]:
        return self.listed


def listed_peers(members: dict[str, Member]) -> ListedPeers:
    now = int(time.time())
    return ListedPeers(
        [PeerStatus(m.public_key, "", (), now - 5, 10**6, 10**6) for m in members.values()]
    )


class RealPeers:
    """A real WireGuard interface (wireguard-go without the kernel module) with one peer
    per member, set in one ``wg set``; removed by ``close``."""

    def __init__(self, count: int) -> None:
        self.keys = [generate_wireguard_keypair()[1] for _ in range(count)]
        self.interface = WireGuardInterface(BENCH_INTERFACE)
        if self.interface.exists():
            self.interface.down()  # left by a killed run of this benchmark
        private, _public = generate_wireguard_keypair()
        self.interface.up(select_backend(), private, BENCH_ADDRESS, None, [])
        try:
            command = ["set", BENCH_INTERFACE]
            for index, key in enumerate(self.keys):
                command += ["peer", key, "allowed-ips", f"{member_ip(index)}/32"]
            wg(*command)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.interface.down()


def hub_metrics(
    state_dir: Path,
    current_pool: Callable[[], Pool | None],
    members: dict[str, Member],
    interface: WireGuardInterface,
    db: Any,
) -> HubMetrics:
    """The hub's metrics on 127.0.0.1 and a free port, on the running loop."""
    settings = HubSettings(state_dir=str(state_dir), overlay="127.0.0.0/24", metrics_port=0)
    distributor = PeerDistributor(
        settings, db, interface, state_dir / "hub.toml", lambda rules: None
    )
    distributor.members.update(members)
    loop = asyncio.get_running_loop()
    collector = HubCollector(loop, current_pool, distributor, interface, relaying=False)
    return HubMetrics(settings, collector)


def scrape(port: int) -> tuple[float, int]:
    """One ``GET /metrics``: (seconds, bytes)."""
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        size = len(answer.read())
    return time.perf_counter() - began, size


class Scraper:
    """Scrapes every ``interval`` seconds in a thread, from ``start`` until ``stop``."""

    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.seconds: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def _run(self) -> None:
        """A scrape at once, then one every ``interval`` (as Prometheus keeps a target's
        schedule), until ``stop``."""
        while True:
            try:
                self.seconds.append(scrape(self.port)[0])
            except OSError:
                self.failures += 1
            if self._stop.wait(self.interval):
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(30)
        median = statistics.median(self.seconds) * 1000 if self.seconds else 0.0
        return {"scrapes": len(self.seconds), "failures": self.failures, "median_ms": median}
