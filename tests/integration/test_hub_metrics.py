"""The hub's ``/metrics`` (hub/metrics.py) over real HTTP, on a real pool with workers: what
the pool is at scrape time, what its counters counted, the WireGuard figures by node id,
and the web child's figures from its multiprocess directory. The end-to-end test with a
real Prometheus over the overlay is tests/e2e/test_prometheus.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hivemind_cluster.hub.metrics import HubCollector, HubMetrics, web_metrics_dir
from hivemind_cluster.mesh.peering import PeerDistributor
from hivemind_cluster.mesh.peermembers import Member
from hivemind_cluster.mesh.wireguard import PeerStatus
from tests.integration.test_pool import submit
from tests.support.meshkit import FakeHubInterface
from tests.support.poolkit import Cluster, ScriptedExecutor, echo, in_a_cluster

pytestmark = pytest.mark.privileged
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metrics_for(cluster: Cluster, interface: FakeHubInterface) -> HubMetrics:
    """The hub's metrics on a port of its own (127.0.0.1: the test overlay's hub address)."""
    settings = dataclasses.replace(cluster.settings, metrics_port=0)
    assert cluster.pool is not None
    path = settings.path / "hub.toml"
    distributor = PeerDistributor(settings, cluster.pool.db, interface, path, lambda rules: None)
    distributor.members["w1"] = Member("w1", "w1", "worker", "key-w1", "127.0.0.2")  # not started
    loop = asyncio.get_running_loop()
    collector = HubCollector(loop, lambda: cluster.pool, distributor, interface, False)
    return HubMetrics(settings, collector)


@in_a_cluster()
async def test_a_scrape_shows_the_pool_now_and_what_it_counted(cluster: Cluster) -> None:
    interface = FakeHubInterface()
    metrics = metrics_for(cluster, interface)
    metrics.start()
    try:
        handshake = int(time.time()) - 7
        interface.peers = lambda: [PeerStatus("key-w1", "", (), handshake, 1234, 5678)]  # type: ignore[method-assign]
        before = await asyncio.to_thread(scrape, metrics.port)
        await cluster.start_worker("w1", ScriptedExecutor(echo))
        stub = await cluster.operator_stub()
        ids = [(await stub.Submit(submit(["true"]))).id for _ in range(3)]
        for task_id in ids:
            await cluster.wait_settled(stub, task_id)
        after = await asyncio.to_thread(scrape, metrics.port)
    finally:
        await asyncio.to_thread(metrics.stop)

    def rose(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert rose("hivemind_task_state_changes_total", state="queued") == 3
    assert rose("hivemind_task_state_changes_total", state="succeeded") == 3
    assert rose("hivemind_task_submit_to_assign_seconds_count") == 3
    assert rose("hivemind_settlements_total", outcome="paid") == 3
    assert rose("hivemind_worker_streams_opened_total", kind="first") == 1
    assert value(after, "hivemind_workers", state="ready") == 1
    assert value(after, "hivemind_tasks", state="queued") == 0
    assert value(after, "hivemind_cluster_cpu_cores", kind="capacity") == 2
    assert 0 <= value(after, "hivemind_heartbeat_age_seconds", node="w1") < 30
    assert value(after, "hivemind_ledger_supply_cpt") > 0
    assert value(after, "hivemind_members", role="worker") == 1
    assert 7 <= value(after, "hivemind_wireguard_handshake_age_seconds", node="w1") < 60
    assert value(after, "hivemind_wireguard_received_bytes_total", node="w1") == 1234
    assert value(after, "hivemind_wireguard_sent_bytes_total", node="w1") == 5678


@in_a_cluster()
async def test_the_web_childs_requests_are_served_by_the_hub(cluster: Cluster) -> None:
    """A process in multiprocess mode (as hub/webprocess.py starts the web) counts a
    request; the hub's scrape shows it. The directory is emptied at start."""
    metrics = metrics_for(cluster, FakeHubInterface())
    metrics.start()
    try:
        count = (
            "from hivemind_cluster.web.metrics import REQUESTS\n"
            "REQUESTS.labels('/login', 'GET', '200').inc(4)\n"
        )
        environment = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(web_metrics_dir(cluster.settings)),
        }
        subprocess.run([sys.executable, "-c", count], env=environment, check=True)
        samples = await asyncio.to_thread(scrape, metrics.port)
    finally:
        await asyncio.to_thread(metrics.stop)
    labels = {"route": "/login", "method": "GET", "status": "200"}
    assert value(samples, "hivemind_web_requests_total", **labels) == 4
    again = metrics_for(cluster, FakeHubInterface())  # a new `up` starts from zero
    assert not any(web_metrics_dir(cluster.settings).iterdir())
    again.unregister()
