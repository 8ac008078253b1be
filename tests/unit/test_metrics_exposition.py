"""The hand-written per-node families (core/exposition.py) parse as Prometheus text exactly
as prometheus-client writes them; the agent's /metrics (agent/metricspage.py) from a fixed
status, served on loopback and the overlay only; the web's request counters keyed by URL
rule, never by path."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from hivemind_cluster.agent.metricspage import metrics_text, serves_metrics
from hivemind_cluster.agent.peerview import DIRECT, RELAYED, PeerRow
from hivemind_cluster.core.exposition import NodeFamily, families_text, render
from hivemind_cluster.web import metrics as web_metrics
from tests.support.enrollments import lab_enrollment
from tests.unit.test_agent_status import NOW, STATUS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
ODD_NODES = ["n1", 'quote"d', "back\\slash", "new\nline"]


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("kind", ["gauge", "counter"])
def test_per_node_families_read_back_as_prometheus_clients_do(kind: str) -> None:
    values = [(node, float(i) + 0.5) for i, node in enumerate(ODD_NODES)] + [("never", math.inf)]
    ours = render([NodeFamily("hivemind_x_seconds", "An x", kind, values)]).decode()  # type: ignore[arg-type]
    family_type = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
    theirs = family_type("hivemind_x_seconds", "An x", labels=["node"])
    for node, value in values:
        theirs.add_metric([node], value)
    assert ours == families_text([theirs]).decode()
    assert samples(ours) == samples(families_text([theirs]).decode())


def test_no_families_write_nothing() -> None:
    assert render([]) == b""


def test_the_agents_metrics_show_its_overlay_peers_and_worker() -> None:
    peers = (
        PeerRow("w2", "worker", "100.64.0.3", DIRECT, "198.51.100.3:51820", NOW - 12, 10, 20, "n2"),
        PeerRow("op", "operator", "100.64.0.4", RELAYED, "", None, 0, 0, "n4"),
        PeerRow("old", "worker", "100.64.0.5", RELAYED, "", None, 0, 0, ""),  # no node id: left out
    )
    found = samples(metrics_text(replace(STATUS, peers=peers)).decode())
    assert found[("hivemind_overlay_up", ())] == 1
    assert found[("hivemind_peer_direct", (("node", "n2"),))] == 1
    assert found[("hivemind_peer_direct", (("node", "n4"),))] == 0
    assert ("hivemind_peer_direct", (("node", ""),)) not in found
    ages = "hivemind_wireguard_handshake_age_seconds"
    assert found[(ages, (("node", "hub"),))] == 30  # the overlay's last handshake
    assert found[(ages, (("node", "n2"),))] == 12
    assert math.isinf(found[(ages, (("node", "n4"),))])  # never
    assert found[("hivemind_wireguard_received_bytes_total", (("node", "n2"),))] == 10
    assert found[("hivemind_wireguard_sent_bytes_total", (("node", "hub"),))] == 5 << 20
    assert found[("hivemind_worker_connected", ())] == 1
    assert found[("hivemind_worker_running_tasks", ())] == 1
    assert ("process_cpu_seconds_total", ()) in found  # the process's own, from the registry


@pytest.mark.parametrize(
    ("local", "asker", "served"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("::1", "::1", True),
        ("100.64.0.7", "100.64.0.4", True),  # the node's overlay address, from a member
        ("::ffff:100.64.0.7", "::ffff:100.64.0.1", True),
        ("198.51.100.7", "198.51.100.9", False),  # its underlay address
        ("100.64.0.7", "198.51.100.9", False),  # the overlay address routed from the underlay
        ("100.64.0.8", "100.64.0.4", False),  # another overlay address (not this node's)
        ("127.0.0.1", "198.51.100.9", False),
        ("not an address", "127.0.0.1", False),
    ],
)
def test_metrics_answer_over_loopback_and_the_overlay_only(
    local: str, asker: str, served: bool
) -> None:
    enrollment = lab_enrollment(overlay_ip="100.64.0.7", overlay_prefix=16)
    assert serves_metrics(local, asker, enrollment) is served


def test_web_requests_are_counted_by_url_rule_never_by_path() -> None:
    app = Flask(__name__)
    web_metrics.init_app(app)
    app.add_url_rule("/tasks/<task_id>", "task", lambda task_id: "ok")

    def counted(route: str, status: str) -> float:
        labels = {"route": route, "method": "GET", "status": status}
        return REGISTRY.get_sample_value("hivemind_web_requests_total", labels) or 0.0

    before = counted("/tasks/<task_id>", "200"), counted("unmatched", "404")
    client = app.test_client()
    for task_id in ("t-1", "t-2", "t-3"):
        assert client.get(f"/tasks/{task_id}").status_code == 200
    assert client.get("/no/such/page/x1").status_code == 404
    assert counted("/tasks/<task_id>", "200") == before[0] + 3
    assert counted("unmatched", "404") == before[1] + 1
    latency = REGISTRY.get_sample_value(
        "hivemind_web_request_duration_seconds_count", {"route": "/tasks/<task_id>"}
    )
    assert latency is not None and latency >= 3
