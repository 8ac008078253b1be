"""The agent's ``/metrics`` (Prometheus text format), on its status page's server.

Made from the same ``Status`` the page shows (agent/statuspage.py), so both agree: the
overlay (the hub peer's handshake age and bytes), each other member's WireGuard figures
and whether its path is direct, the worker's stream and what it runs; then the process's
default registry: the executor's phases and finished tasks (agent/metrics.py) and the
process's own CPU and memory. Labels are node ids (the cluster's members, a bounded set;
the hub is ``hub``) and fixed states, never a task id or free text.

Metrics answer only over loopback or the overlay (``serves_metrics``: both the address
asked and the asker's): whatever ``status_listen`` binds, a request that came over the
underlay gets a 404.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from hivemind_cluster.agent.peerview import DIRECT
from hivemind_cluster.agent.state import Enrollment
from hivemind_cluster.core.exposition import NodeFamily, families_text, render
from hivemind_cluster.core.names import HUB_NODE_ID
from hivemind_cluster.mesh.wgmetrics import PeerFigures, wireguard_families

if TYPE_CHECKING:
    from hivemind_cluster.agent.statuspage import Status

METRICS_PATH = "/metrics"


def serves_metrics(local_address: str, client_address: str, enrollment: Enrollment) -> bool:
    """Did the request come over loopback, or over the overlay to this node's overlay
    address? Both ends count: Linux takes a packet for any local address on any interface,
    so an underlay neighbour routing the overlay here would reach the overlay address."""
    try:
        local, client = (
            ipaddress.ip_address(a.removeprefix("::ffff:")) for a in (local_address, client_address)
        )
    except ValueError:
        return False
    if local.is_loopback:
        return client.is_loopback
    overlay = ipaddress.ip_network(f"{enrollment.overlay_ip}/{enrollment.overlay_prefix}", False)
    return str(local) == enrollment.overlay_ip and client in overlay


def metrics_text(status: Status) -> bytes:
    """The exposition of ``status`` and of the process's default registry."""
    families, per_node = status_families(status)
    return families_text(families) + render(per_node) + generate_latest(REGISTRY)


def status_families(status: Status) -> tuple[list[Metric], list[NodeFamily]]:
    """The status's families; the per-node ones apart (core/exposition.py writes them)."""
    overlay, peers = status.overlay, status.peers
    up = GaugeMetricFamily("hivemind_overlay_up", "The overlay interface is up (1) or not (0)")
    up.add_metric([], float(overlay.up))
    direct: list[tuple[str, float]] = []
    figures = [
        PeerFigures(HUB_NODE_ID, overlay.last_handshake or 0, overlay.rx_bytes, overlay.tx_bytes)
    ]
    for row in peers:
        if row.node_id:  # rows from a peers.json written before node ids were shown
            direct.append((row.node_id, float(row.path == DIRECT)))
            figures.append(
                PeerFigures(row.node_id, row.last_handshake or 0, row.rx_bytes, row.tx_bytes)
            )
    families: list[Metric] = [up]
    per_node = [
        NodeFamily(
            "hivemind_peer_direct",
            "1: traffic to the peer goes direct; 0: through the hub",
            "gauge",
            direct,
        ),
        *wireguard_families(figures, status.generated_at),
    ]
    if (worker := status.worker) is not None:
        connected = GaugeMetricFamily(
            "hivemind_worker_connected", "The worker's stream to the pool is open (1) or not (0)"
        )
        connected.add_metric([], float(worker.connected))
        running = GaugeMetricFamily("hivemind_worker_running_tasks", "Attempts running now")
        running.add_metric([], len(worker.running))
        families += [connected, running]
    return families, per_node
