"""End to end, as root: the pool over a real WireGuard overlay, tasks in real Docker.

Hosts: ``hub``; workers ``w1`` (2 CPUs) and ``w2`` (1 CPU), each running the real agent
service; operator ``op`` using the ``hivemind-pool`` CLI with its node certificate;
``outsider`` on the underlay only. Tests share one mesh and run in file order; the
destructive one (killing w1) comes last.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import tool
from tests.support.poolworld import PoolWorld, pool_world, remove_containers

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolWorld]:
    with pool_world(tmp_path_factory.mktemp("poollab")) as found:
        yield found


def test_workers_register_capacity_docker_and_labels(world: PoolWorld) -> None:
    workers = {n["name"]: n for n in world.wait_for_workers(2)}
    assert workers["w1"]["capacity"] == {"cpu_millis": 2000, "memory_bytes": 2 << 30, "gpus": 0}
    assert workers["w2"]["capacity"]["cpu_millis"] == 1000
    assert workers["w1"]["docker_version"] and workers["w1"]["labels"] == {"lab": "w1"}
    assert workers["w1"]["state"] == "ready" and workers["w1"]["last_heartbeat"]


def test_operator_runs_a_python_bundle_and_gets_logs_and_output(
    world: PoolWorld, tmp_path: Path
) -> None:
    bundle = tmp_path / "job"
    bundle.mkdir()
    (bundle / "main.py").write_text(
        "import os, sys\n"
        "print('sum', sum(range(1000)))\n"
        "print('to stderr', file=sys.stderr)\n"
        "open('/out/answer.txt', 'w').write(open('/work/input.txt').read().upper())\n"
    )
    (bundle / "input.txt").write_text("hello overlay")
    shown = world.cli(world.op, "submit", "--bundle", str(bundle), "--memory", "128M", "--wait")
    task = json.loads(world.cli(world.op, "status", shown.stdout.split()[1], "--json").stdout)
    assert task["status"] == "succeeded" and task["exit_code"] == 0, task
    assert task["image"] == "hivemind/python:3.11" and task["command"] == [
        "python",
        "/work/main.py",
    ]
    assert task["usage"]["wall_seconds"] > 0
    logs = world.cli(world.op, "logs", task["id"])
    assert "sum 499500" in logs.stdout and "to stderr" in logs.stderr
    out = tmp_path / "out"
    world.cli(world.op, "result", task["id"], "-o", str(out))
    assert (out / "answer.txt").read_text() == "HELLO OVERLAY"


def test_tasks_spread_over_workers_by_capacity(world: PoolWorld) -> None:
    # The tasks outlive the test (it cancels them), so how fast they are submitted on a
    # loaded machine cannot change where they land.
    ids = [world.submit_busybox("sleep", "300")["id"] for _ in range(3)]
    try:
        tasks = [world.wait_status(task_id, "running", timeout=60) for task_id in ids]
        per_node = sorted(t["node"] for t in tasks)
        assert per_node == ["w1", "w1", "w2"], "w1 has 2 CPUs, w2 one: exactly 2 + 1 fit at once"
    finally:
        for task_id in ids:
            world.cli(world.op, "cancel", task_id, check=False)
    for task_id in ids:
        world.wait_status(task_id, "cancelled", timeout=60)


def test_the_user_pays_exactly_the_cost_and_the_worker_earns_it(world: PoolWorld) -> None:
    def balance(*account: str) -> int:
        host = world.hub if account else world.op
        extra = ["--account", account[0]] if account else []
        return int(world.cli_json(host, "balance", *extra)["balance_micro"])

    user_before = balance()
    earned_before = {h.name: balance(world.node_id(h)) for h in (world.w1, world.w2)}
    task = world.submit_busybox(
        "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done", options=("--wait",)
    )
    deadline = time.monotonic() + 30
    while not task["settled"]:
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
        task = world.status(task["id"])
    cost = int(task["cost_micro"])
    assert cost > 0
    assert balance() == user_before - cost
    earned = {
        h.name: balance(world.node_id(h)) - earned_before[h.name] for h in (world.w1, world.w2)
    }
    assert earned[task["node"]] == cost and sum(earned.values()) == cost
    audit = world.mesh.hub_cli("ledger", "audit", "--json")
    assert json.loads(audit.stdout)["ok"] is True


def test_a_task_that_could_never_fit_is_refused_at_submission(world: PoolWorld) -> None:
    refused = world.cli(
        world.op,
        "submit",
        "--image",
        "hivemind/busybox:latest",
        "--cpu",
        "4",
        "--",
        "true",
        check=False,
    )
    assert refused.returncode == 1
    assert "no node could ever run this task" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_pool_refuses_a_certificate_used_from_another_address(world: PoolWorld) -> None:
    # op's certificate, presented from w2's overlay address.
    borrowed = world.w2.run(
        tool("hivemind-pool"),
        "list",
        "--identity",
        str(world.mesh.agent_dir(world.op)),
        check=False,
    )
    assert borrowed.returncode == 1
    assert "is bound to" in borrowed.stderr and "but the call comes from" in borrowed.stderr


def test_the_pool_refuses_a_client_without_certificate(world: PoolWorld) -> None:
    probe = (
        "import grpc, sys\n"
        "from hivemind_cluster.protos import pool_pb2 as pb, pool_pb2_grpc as g\n"
        "ca = open(sys.argv[1], 'rb').read()\n"
        "ch = grpc.secure_channel('100.64.0.1:50051', grpc.ssl_channel_credentials(ca),\n"
        "    options=[('grpc.ssl_target_name_override', 'hub.hivemind.internal')])\n"
        "try:\n"
        "    g.TasksStub(ch).List(pb.ListRequest(), timeout=5)\n"
        "    print('OK')\n"
        "except grpc.RpcError as exc:\n"
        "    print(exc.code().name)\n"
    )
    ca = world.mesh.agent_dir(world.op) / "ca.pem"
    answer = world.op.run(sys.executable, "-c", probe, str(ca)).stdout.strip()
    assert answer == "UNAVAILABLE"  # the TLS handshake itself fails


def test_the_pool_port_does_not_answer_on_the_underlay(world: PoolWorld) -> None:
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], 50051), timeout=2).close(); print('open')\n"
        "except OSError as exc:\n"
        "    print('closed', type(exc).__name__)\n"
    )
    answer = world.outsider.run(sys.executable, "-c", probe, world.hub.ip).stdout
    assert answer.startswith("closed")


def test_the_agent_status_page_answers_on_the_workers_loopback(world: PoolWorld) -> None:
    fetch = (
        "import json, sys, urllib.request\n"
        "with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:\n"
        "    print(answer.read().decode())\n"
    )
    page = json.loads(
        world.w1.run(sys.executable, "-c", fetch, "http://127.0.0.1:5000/status.json").stdout
    )
    agent = json.loads(world.mesh.agent(world.w1, "status", "--json").stdout)
    assert page["node"]["id"] == agent["node_id"] and page["node"]["role"] == "worker"
    assert page["node"]["overlay_ip"] == agent["overlay_ip"]
    assert page["overlay"]["up"] and page["overlay"]["rx_bytes"] > 0
    assert page["generated_at"] - page["overlay"]["last_handshake"] < 180, page["overlay"]
    assert page["hub"]["connected"] is True, page["hub"]
    assert page["ledger"]["available"] and page["ledger"]["account"] == agent["node_id"], page
    assert agent["status_page"] == "http://127.0.0.1:5000/"
    # Loopback only: the overlay does not reach it.
    probe = (
        "import socket, sys\n"
        "try:\n    socket.create_connection((sys.argv[1], 5000), timeout=2)\n"
        "except OSError:\n    print('closed')\nelse:\n    print('open')"
    )
    reply = world.hub.run(sys.executable, "-c", probe, agent["overlay_ip"]).stdout.strip()
    assert reply == "closed", reply


def test_killing_a_worker_requeues_its_task_exactly_once(world: PoolWorld) -> None:
    w1_id = world.node_id(world.w1)
    # w1 has the most free CPU, so the task lands there.
    task_id = world.submit_busybox(
        "sh",
        "-c",
        "sleep 20; echo finished",  # still running at the kill, however slow the CLI calls
        options=(
            "--max-attempts",
            "3",
        ),
    )["id"]
    world.wait_status(task_id, "running")
    assert world.status(task_id)["node_id"] == w1_id
    # SIGKILL everything in w1's namespace and delete its interface.
    pids = world.w1.run("ip", "netns", "pids", world.w1.netns).stdout.split()
    subprocess.run(["kill", "-9", *pids], check=False)
    subprocess.run(
        ["ip", "netns", "exec", world.w1.netns, "ip", "link", "delete", world.w1.wg_interface],
        capture_output=True,
        check=False,
    )
    killed_at = time.time()
    remove_containers(w1_id)  # the engine is shared: its container would keep running
    done = world.cli_json(world.op, "wait", task_id, "--timeout", "120")
    # When the pool declared the attempt lost, by its own clock (the same machine's): one
    # heartbeat_timeout (10 s) after w1's last heartbeat, which came at most 1 s before the
    # kill, plus the reaper's period. Read from the record, so slow CLI polls don't count.
    lost_after = done["attempts"][0]["ended_at"] - killed_at
    print(f"w1's attempt declared lost {lost_after:.1f}s after the kill")
    assert 8 <= lost_after <= 13, f"declared lost {lost_after:.1f}s after the kill"
    assert done["status"] == "succeeded" and done["node"] == "w2", done
    assert [(a["attempt"], a["status"]) for a in done["attempts"]] == [
        (1, "lost"),
        (2, "succeeded"),
    ]
    # The killed attempt reports late: refused, and nothing changes.
    late = world.w1.run(
        sys.executable,
        "-m",
        "tests.support.late_result",
        str(world.mesh.agent_dir(world.w1)),
        task_id,
        "1",
    )
    answer = json.loads(late.stdout)
    assert answer["kind"] == "rejected" and "no longer current" in answer["reason"], answer
    after = world.status(task_id)
    assert after["status"] == "succeeded" and after["attempt"] == 2
    logs = world.cli(world.op, "logs", task_id).stdout
    assert logs.count("finished") == 1


def test_sigterm_drains_a_worker_letting_its_task_finish(world: PoolWorld) -> None:
    # Long enough to be running at the SIGTERM, short enough for the drain (30 s) to wait.
    task_id = world.submit_busybox("sh", "-c", "sleep 10; echo drained")["id"]
    world.wait_status(task_id, "running")
    status = json.loads(world.mesh.agent(world.w2, "status", "--json").stdout)
    pid = int(status["service_pid"])
    signalled_at = time.time()
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    done = world.cli_json(world.op, "wait", task_id, "--timeout", "60")
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    assert done["ended_at"] > signalled_at, "the task had ended before the drain began"
    assert "drained" in world.cli(world.op, "logs", task_id).stdout
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the agent service did not stop after draining"
        time.sleep(0.1)
    assert world.w2.wg_interface not in world.w2.run("ip", "-o", "link").stdout
