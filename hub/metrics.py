"""The hub's ``/metrics``: ``http://<hub overlay IP>:<metrics_port>/metrics``, never the underlay.

A small HTTP server (stdlib, a daemon thread) answers ``GET /metrics`` with the Prometheus
text format: the default registry of prometheus-client (the counters and histograms of
the pool, the mesh and enrollment as they count, the process's own CPU, memory and file
descriptors, and the web child's figures: it writes them to files in multiprocess mode,
hub/webprocess.py), then what ``HubCollector`` reads of the hub at that moment. It binds
the hub's overlay address only; the underlay guard drops packets for that address
arriving on any other interface, and the overlay policy lets operators in
(mesh/policy.py ``default_policy``).

The pool's and the distributor's state is only ever touched from the hub's event loop, so
the collector hops there for it (``run_coroutine_threadsafe``), while the scrape's own
thread runs ``wg show`` and reads the relay counters meanwhile (commands: never on the
loop). A part that cannot be read (Redis restarting, the loop stuck past SCRAPE_TIMEOUT)
is left out of that scrape and logged; the rest is served. Per-node families (one series
per member) are written by core/exposition.py: with 5,000 members prometheus-client alone
would take a scrape past 100 ms (bench/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from hivemind_cluster.core.exposition import CONTENT_TYPE, NodeFamily, families_text, render
from hivemind_cluster.core.names import WEB_METRICS_DIR
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import relaycount
from hivemind_cluster.mesh.peering import PeerDistributor
from hivemind_cluster.mesh.wgmetrics import peer_figures, relayed_family, wireguard_families
from hivemind_cluster.mesh.wireguard import PeerStatus, WireGuardInterface
from hivemind_cluster.pool.metrics import pool_families
from hivemind_cluster.pool.pool import Pool

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the event loop's part
METRICS_PATH = "/metrics"


@dataclass
class Reading:
    """One scrape's figures of the hub."""

    families: list[Metric] = field(default_factory=list)
    per_node: list[NodeFamily] = field(default_factory=list)


@dataclass
class MeshView:
    """What the scrape's thread needs of the distributor, copied on the event loop."""

    node_of_key: dict[str, str]
    node_of_ip: dict[str, str]


class HubCollector:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        current_pool: Callable[[], Pool | None],
        distributor: PeerDistributor,
        interface: WireGuardInterface,
        relaying: bool,
    ) -> None:
        self.loop = loop
        self.current_pool = current_pool  # None while Redis restarts (hub/database.py)
        self.distributor = distributor
        self.interface = interface
        self.relaying = relaying  # the relay counters exist (forward_between_peers)

    def text(self) -> bytes:
        """The hub's figures now, in the text format."""
        reading = self.read()
        return families_text(reading.families) + render(reading.per_node)

    def read(self) -> Reading:
        reading = Reading()
        on_loop: Future[MeshView] = asyncio.run_coroutine_threadsafe(
            self.on_loop(reading), self.loop
        )
        peers, relayed = self.read_overlay()  # meanwhile, in this thread
        try:
            view = on_loop.result(SCRAPE_TIMEOUT)
        except Exception as exc:  # the hub is stopping, or its loop is stuck
            on_loop.cancel()
            log.warning("metrics: the pool's and mesh's state unavailable (%r)", exc)
            return Reading()  # not ``reading``: the loop may still be filling it
        if peers is not None:
            reading.per_node += wireguard_families(peer_figures(peers, view.node_of_key.get))
        if relayed is not None:
            reading.per_node.append(relayed_family(relayed, view.node_of_ip))
        return reading

    def read_overlay(self) -> tuple[list[PeerStatus] | None, dict[str, int] | None]:
        try:
            peers = self.interface.peers()
            relayed = relaycount.read(self.interface.name) if self.relaying else None
        except Exception as exc:
            log.warning("metrics: WireGuard figures unavailable (%s)", exc)
            return None, None
        return peers, relayed

    async def on_loop(self, reading: Reading) -> MeshView:
        """The pool's families and the distributor's, and a copy of its members."""
        members = list(self.distributor.members.values())
        roles = GaugeMetricFamily("hivemind_members", "Active members by role", labels=["role"])
        for role in ("operator", "worker"):
            roles.add_metric([role], sum(m.role == role for m in members))
        streams = GaugeMetricFamily("hivemind_mesh_streams", "Members' peer streams open")
        streams.add_metric([], len(self.distributor.subscriptions))
        revision = GaugeMetricFamily("hivemind_mesh_revision", "The peer set's revision")
        revision.add_metric([], self.distributor.revision)
        reading.families += [roles, streams, revision]
        pool = self.current_pool()
        if pool is not None:
            try:
                families, per_node = await pool_families(pool)
                reading.families += families
                reading.per_node += per_node
            except Exception as exc:
                log.warning("metrics: the pool's figures unavailable (%s)", exc)
        return MeshView(
            {m.public_key: m.node_id for m in members}, {m.overlay_ip: m.node_id for m in members}
        )


def web_metrics_dir(settings: HubSettings) -> Path:
    return settings.path / WEB_METRICS_DIR


def empty_web_metrics(settings: HubSettings) -> Path:
    """The web child's metrics directory, emptied (a new ``up`` starts from zero, as the
    hub's own counters do)."""
    directory = web_metrics_dir(settings)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    return directory


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], body: Callable[[], bytes]) -> None:
        self.body = body
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "hivemind-hub"
    sys_version = ""
    timeout = 10

    def do_GET(self) -> None:
        if self.path.split("?")[0] != METRICS_PATH:
            self._send(404, "text/plain", b"not found: the metrics are at /metrics\n")
            return
        try:
            body = cast(_Server, self.server).body()
        except Exception:  # a bug must cost one scrape, not the server
            log.exception("metrics: the scrape failed")
            self._send(500, "text/plain", b"error\n")
            return
        self._send(200, CONTENT_TYPE, body)

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class HubMetrics:
    """The server and what it serves; ``stop`` undoes ``start`` exactly."""

    def __init__(self, settings: HubSettings, collector: HubCollector) -> None:
        self.settings = settings
        self.collector = collector
        self.web = MultiProcessCollector(None, str(empty_web_metrics(settings)))  # type: ignore[no-untyped-call]
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def body(self) -> bytes:
        return generate_latest(REGISTRY) + self.collector.text()

    def start(self) -> None:
        REGISTRY.register(self.web)
        try:
            self.server = _Server((self.settings.hub_ip, self.settings.metrics_port), self.body)
        except OSError:
            self.unregister()
            raise
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1]) if self.server is not None else 0

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.unregister()

    def unregister(self) -> None:
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self.web)
