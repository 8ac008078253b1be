"""Crashing a lab hub's parts (tests/e2e/test_hub_recovery.py): tasks that print a line a
second, the processes a hub runs in its namespace, and waiting for the hub to serve again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.support.hostprocesses import pids_named
from tests.support.lab import CliUser, Mesh
from tests.support.poolworld import PoolWorld

LINES = 12
# Twelve lines, one a second, then a result: in flight for long enough to crash something.
SCRIPT = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 1; done; echo whole > /out/result.txt"
EXPECTED_LOG = "".join(f"line {i}\n" for i in range(1, LINES + 1))


def submit_talkers(world: PoolWorld, count: int) -> list[str]:
    """``count`` tasks printing a line a second, once all of them are running."""
    ids = [
        world.submit_busybox("sh", "-c", SCRIPT, options=("--max-attempts", "3"))["id"]
        for _ in range(count)
    ]
    for task_id in ids:
        world.wait_status(task_id, "running", timeout=60)
    return ids


def kill_redis(world: PoolWorld) -> int:
    found = pids_named(world.hub, "redis-server")
    kill_redis_pid(found)
    return found[0]


def kill_redis_pid(found: list[int]) -> int:
    """SIGKILL the one Redis of a hub's namespace; how many were killed (1)."""
    [pid] = found
    os.kill(pid, signal.SIGKILL)
    return 1


def wait_until(check: Any, what: str, world: PoolWorld, seconds: float = 90) -> Any:
    """``check()``'s first true answer (exceptions count as false) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = check()
        except (AssertionError, ValueError, KeyError):
            answer = None
        if answer:
            return answer
        assert time.monotonic() < deadline, f"{what} not within {seconds}s\n{world.logs()}"
        time.sleep(0.5)


def pool_answers(world: PoolWorld) -> bool:
    return world.mesh.pool_cli(world.hub, "list", "--json", check=False).returncode == 0


def web_answers(user: CliUser) -> bool:
    return user.run("balance", "--json", check=False).returncode == 0


def start_hub_again(mesh: Mesh, seconds: float = 60) -> None:
    """``up`` once more, until it publishes its own run.json (a dead hub's may be there)."""
    mesh.start_hub()
    process = mesh.hub_process
    assert process is not None
    deadline = time.monotonic() + seconds
    while True:
        run = mesh.hub_dir / "run.json"
        if run.exists() and json.loads(run.read_text() or "{}").get("pid") == process.pid:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("the hub did not start again:\n" + mesh.hub_log()[-4000:])
        time.sleep(0.1)


def check_delivered_whole(world: PoolWorld, task_id: str, tmp: Path) -> dict[str, Any]:
    """The task succeeded, its log is every line in order, its result is there."""
    done: dict[str, Any] = world.cli_json(world.op, "wait", task_id, "--timeout", "180")
    assert done["status"] == "succeeded", (done, world.logs())
    logs = world.cli(world.op, "logs", task_id).stdout
    assert logs == EXPECTED_LOG, f"task {task_id} log:\n{logs}\n{done}\n{world.logs()}"
    out = tmp / task_id
    world.cli(world.op, "result", task_id, "-o", str(out))
    assert (out / "result.txt").read_text() == "whole\n"
    return done


def settled_cost(world: PoolWorld, task_id: str, seconds: float = 60) -> int:
    task = wait_until(
        lambda: (t := world.status(task_id))["settled"] and t, "settled", world, seconds
    )
    return int(task["cost_micro"])


def balance(world: PoolWorld, account: str = "") -> int:
    host = world.hub if account else world.op
    extra = ("--account", account) if account else ()
    return int(world.cli_json(host, "balance", *extra)["balance_micro"])


def audit_ok(world: PoolWorld) -> bool:
    audit = world.mesh.hub_cli("ledger", "audit", "--json", check=False)
    return bool(json.loads(audit.stdout)["ok"])
