"""End to end, as root: the hub recovers from its own crashes (issue 13, points 2 and 3).

A hub with two Docker workers and an operator (tests/support/poolworld.py), tasks printing
a line a second in flight: kill -9 the hub's Redis, then the hub itself. Each time the
hub serves again by itself (pool and web), every task completes with its whole log and its
result, every CPT is accounted for and the ledger audits clean.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostprocesses import pids_named, processes_in
from tests.support.hubcrash import (
    audit_ok,
    balance,
    check_delivered_whole,
    kill_redis,
    kill_redis_pid,
    pool_answers,
    settled_cost,
    start_hub_again,
    submit_talkers,
    wait_until,
    web_answers,
)
from tests.support.lab import CliUser, Lab, Mesh, tool
from tests.support.poolworld import PoolWorld, pool_world
from tests.support.prerequisites import require_root_network

pytestmark = pytest.mark.privileged
PASSWORD = "recovery password 9"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolWorld]:
    with pool_world(tmp_path_factory.mktemp("recoverylab")) as found:
        yield found


def test_a_killed_redis_is_restarted_and_nothing_is_lost(world: PoolWorld, tmp_path: Path) -> None:
    user = CliUser(world.op, tmp_path / "config.json")
    user.run(
        "register",
        "--api",
        "100.64.0.1",
        "--user",
        "erin",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    workers = [world.node_id(h) for h in (world.w1, world.w2)]
    before = balance(world), [balance(world, w) for w in workers]
    ids = submit_talkers(world, 3)
    time.sleep(4)
    killed = kill_redis(world)
    wait_until(lambda: pool_answers(world) and web_answers(user), "pool and web", world)
    [restarted] = pids_named(world.hub, "redis-server")  # one Redis again, a new one
    assert restarted != killed
    for task_id in ids:
        check_delivered_whole(world, task_id, tmp_path)
    costs = sum(settled_cost(world, task_id) for task_id in ids)
    assert balance(world) == before[0] - costs
    assert sum(balance(world, w) for w in workers) - sum(before[1]) == costs
    assert audit_ok(world)
    log = world.mesh.hub_log()
    assert "redis-server exited" in log and "redis-server restarted" in log
    assert user.json("balance")["balance"] == 150  # the web's own user, through the web


def test_a_second_up_is_refused_while_the_hub_runs(world: PoolWorld) -> None:
    second = world.mesh.hub.run(
        tool("hivemind-hub"), "up", "--state-dir", str(world.mesh.hub_dir), check=False
    )
    assert second.returncode == 1, second
    assert second.stderr.startswith("error: a hub is already running from"), second.stderr
    assert "Traceback" not in second.stderr
    assert pool_answers(world)


def test_up_after_a_killed_hub_reclaims_and_finishes_the_tasks(
    world: PoolWorld, tmp_path: Path
) -> None:
    mesh, hub = world.mesh, world.hub
    assert mesh.hub_process is not None
    ids = submit_talkers(world, 2)
    time.sleep(4)
    mesh.hub_process.kill()  # SIGKILL: nothing of `up` unwinds
    mesh.hub_process.wait(timeout=10)
    print("left by the killed hub:", sorted(processes_in(hub).values()))
    start_hub_again(mesh)
    assert len(pids_named(hub, "redis-server")) == len(pids_named(hub, "wireguard-go")) == 1
    # The overlay's peers notice the new hub and re-handshake (agent probe: 2 misses of 5 s).
    wait_until(lambda: world.op.can_ping("100.64.0.1"), "the operator's overlay", world)
    world.wait_for_workers(2, timeout=90)
    for task_id in ids:
        check_delivered_whole(world, task_id, tmp_path)
        settled_cost(world, task_id)
    assert audit_ok(world)
    log = mesh.hub_log()
    assert "reclaiming what it left" in log and f"deleting interface {hub.wg_interface}" in log
    # Stopped cleanly now: nothing of either hub is left.
    assert mesh.stop_hub() == 0
    assert processes_in(hub) == {}, processes_in(hub)
    links = subprocess.run(
        ["ip", "-n", hub.netns, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert hub.wg_interface not in links
    assert "hivemind" not in hub.run("nft", "list", "tables").stdout
    assert not (mesh.hub_dir / "run.json").exists() and not (mesh.hub_dir / "up.json").exists()


def test_a_redis_that_keeps_dying_stops_the_hub_with_an_error(tmp_path: Path) -> None:
    require_root_network()
    with Lab(tmp_path) as lab:
        hub = lab.add_host("hub")
        mesh = Mesh(lab, hub)
        mesh.start_hub()
        assert mesh.hub_process is not None
        kills, deadline = 0, time.monotonic() + 180  # pauses of 1+2+4+8+16 s, and restarts
        while mesh.hub_process.poll() is None:
            assert time.monotonic() < deadline, f"{kills} kills\n{mesh.hub_log()}"
            found = pids_named(hub, "redis-server")
            if found and mesh.hub_cli("token", "list", check=False).returncode == 0:
                kills += kill_redis_pid(found)
            assert kills <= 6, mesh.hub_log()
            time.sleep(0.2)
        log = mesh.hub_log()
        assert mesh.hub_process.returncode == 1, log
        assert kills == 6, log
        assert log.count("redis-server exited (code -9)") == 6
        assert "error: redis-server died 6 times within 600 s; stopping the hub (see " in log
        assert processes_in(hub) == {}
        assert not (mesh.hub_dir / "up.json").exists()
