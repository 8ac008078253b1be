"""End to end, as root, on a hub that ``hivemind-hub up`` runs: a real Prometheus (Debian's)
in the operator's namespace scrapes the hub's ``/metrics`` (100.64.0.1:9464) and a worker's
(its status page, bound to every address here) over the WireGuard overlay; queries through
its HTTP API show what known activity changed. Neither answers on the underlay. The audit
log of the same hub: what the lab did is in it, once each, in Redis and in the mirror file,
and ``audit --verify`` holds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.poolworld import PoolWorld, pool_world
from tests.support.prometheus import Prometheus

pytestmark = pytest.mark.privileged
HUB_METRICS = "100.64.0.1:9464"
STATUS_PORT = 5000
FETCH = """\
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
        print(answer.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError as exc:
    print("unreachable", type(exc).__name__)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolWorld]:
    # Every address: the overlay serves /metrics, the underlay must not (agent/metricspage.py).
    listen = f'status_listen = "0.0.0.0:{STATUS_PORT}"\n'
    with pool_world(tmp_path_factory.mktemp("promlab"), agent_settings=listen) as found:
        yield found


@pytest.fixture(scope="module")
def prometheus(world: PoolWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    w1 = overlay_ip(world, "w1")
    jobs = {"hub": [HUB_METRICS], "agent": [f"{w1}:{STATUS_PORT}"]}
    server = Prometheus(world.op, tmp_path_factory.mktemp("prometheus"), jobs)
    try:
        server.targets_up(list(jobs))
        yield server
    finally:
        server.stop()


def overlay_ip(world: PoolWorld, name: str) -> str:
    return next(str(n["overlay_ip"]) for n in world.mesh.nodes() if n["name"] == name)


def fetch(world: PoolWorld, url: str, host: str = "outsider") -> str:
    by_name = {h.name: h for h in (world.outsider, world.op, world.w1)}
    return by_name[host].run(sys.executable, "-c", FETCH, url).stdout.strip()


def test_five_tasks_succeeded_raise_the_succeeded_counter_by_five(
    world: PoolWorld, prometheus: Prometheus
) -> None:
    succeeded = 'sum(hivemind_task_state_changes_total{state="succeeded"}) or vector(0)'
    before = prometheus.value(succeeded) or 0
    runs = 'sum(hivemind_agent_task_phase_seconds_count{phase="run"}) or vector(0)'
    runs_before = prometheus.value(runs) or 0
    tasks = [world.submit_busybox("sh", "-c", f"echo {n}") for n in range(5)]
    ended = [world.wait_status(task["id"], "succeeded", timeout=60) for task in tasks]
    after = prometheus.wait_for(succeeded, lambda value: (value or 0) >= before + 5)
    assert after == before + 5
    on_w1 = sum(task["node"] == "w1" for task in ended)  # the agent scraped is w1
    assert prometheus.wait_for(runs, lambda value: (value or 0) >= runs_before + on_w1) == (
        runs_before + on_w1
    )
    assert prometheus.value('hivemind_queue_depth{job="hub"}') == 0
    assert prometheus.value('sum(hivemind_workers{state="ready"})') == 2
    assert prometheus.value('sum(hivemind_members{role="worker"})') == 2
    assert (prometheus.value("sum(hivemind_settlements_total)") or 0) >= 5
    latency = "hivemind_task_submit_to_assign_seconds_count"
    assert (prometheus.value(latency) or 0) >= 5


def test_the_overlay_and_each_peer_are_measured(world: PoolWorld, prometheus: Prometheus) -> None:
    w1 = world.node_id(world.w1)
    hub_side = f'hivemind_wireguard_handshake_age_seconds{{job="hub",node="{w1}"}}'
    assert (age := prometheus.value(hub_side)) is not None and age < 180
    received = f'hivemind_wireguard_received_bytes_total{{job="hub",node="{w1}"}}'
    assert (prometheus.value(received) or 0) > 0
    agent_side = 'hivemind_wireguard_handshake_age_seconds{job="agent",node="hub"}'
    assert (age := prometheus.value(agent_side)) is not None and age < 180
    assert prometheus.value('hivemind_overlay_up{job="agent"}') == 1
    assert prometheus.value('hivemind_worker_connected{job="agent"}') == 1
    assert prometheus.value(f'hivemind_heartbeat_age_seconds{{node="{w1}"}}') is not None


def test_web_requests_are_counted_by_route(world: PoolWorld, prometheus: Prometheus) -> None:
    counted = 'sum(hivemind_web_requests_total{route="/login",status="200"}) or vector(0)'
    before = prometheus.value(counted) or 0
    for _ in range(3):
        assert fetch(world, "http://100.64.0.1:5001/login", host="op") == "200"
    assert prometheus.wait_for(counted, lambda value: (value or 0) >= before + 3) == before + 3
    assert prometheus.value('hivemind_web_request_duration_seconds_count{route="/login"}')


def test_metrics_never_answer_on_the_underlay(world: PoolWorld) -> None:
    assert fetch(world, f"http://{world.hub.ip}:9464/metrics").startswith("unreachable")
    w1 = world.w1.ip  # the status page binds every address here: the page answers...
    assert fetch(world, f"http://{w1}:{STATUS_PORT}/status.json") == "200"
    assert fetch(world, f"http://{w1}:{STATUS_PORT}/metrics") == "404"  # ...metrics do not
    w1_overlay = overlay_ip(world, "w1")
    assert fetch(world, f"http://{w1_overlay}:{STATUS_PORT}/metrics", "op") == "200"
    assert fetch(world, f"http://127.0.0.1:{STATUS_PORT}/metrics", "w1") == "200"
    # An underlay neighbour routing the overlay to the worker reaches its overlay address
    # (Linux takes it on any interface), and still gets no metrics: it is not on the overlay.
    world.outsider.run("ip", "route", "add", f"{w1_overlay}/32", "via", w1)
    try:
        assert fetch(world, f"http://{w1_overlay}:{STATUS_PORT}/status.json") == "200"
        assert fetch(world, f"http://{w1_overlay}:{STATUS_PORT}/metrics") == "404"
    finally:
        world.outsider.run("ip", "route", "del", f"{w1_overlay}/32", check=False)


def test_the_hubs_audit_log_has_what_the_lab_did_once_each(world: PoolWorld) -> None:
    """The joins (three tokens, three enrollments), the tasks of the tests before, and the
    first ``up``'s settings: in Redis and, within the mirror's second, in audit.log."""
    entries = json.loads(world.mesh.hub_cli("audit", "--json").stdout)
    actions = [entry["action"] for entry in entries]
    assert actions.count("token.create") == 3 and actions.count("enrollment.accept") == 3
    assert actions.count("settings.change") == 1
    submits = [e for e in entries if e["action"] == "task.submit"]
    assert len(submits) == 5 and {e["actor"] for e in submits} == {f"node:{op_id(world)}"}
    assert [entry["seq"] for entry in entries] == list(range(1, len(entries) + 1))
    verified = json.loads(world.mesh.hub_cli("audit", "--verify", "--json").stdout)
    assert verified == {"entries": len(entries), "intact": True, "problem": None}
    mirror = world.mesh.hub_dir / "audit.log"
    deadline = time.monotonic() + 10
    while len(mirror.read_text().splitlines()) < len(entries):
        assert time.monotonic() < deadline, "the mirror fell behind"
        time.sleep(0.2)
    assert [json.loads(line) for line in mirror.read_text().splitlines()] == entries


def op_id(world: PoolWorld) -> str:
    return world.node_id(world.op)
