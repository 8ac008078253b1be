"""End to end, as root: the web UI, its JSON API and the ``hivemind`` CLI over the overlay.

The hub started by ``hivemind-hub up`` serves the web on its overlay address; two Docker
workers run the tasks; everything user-side happens in the operator's namespace ``op``:
the real ``hivemind`` CLI, and headless Chromium (tests/e2e/web_browser.py) with
screenshots saved under build/artifacts/web-mesh/ (``$HIVEMIND_ARTIFACTS``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import artifacts_dir, browser_prerequisites, run_in_host
from tests.support.hostprocesses import pids_matching
from tests.support.lab import CliUser
from tests.support.poolworld import PoolWorld, pool_world
from tests.support.prerequisites import require

pytestmark = pytest.mark.privileged
HUB_WEB = "http://100.64.0.1:5001"
PASSWORD = "overlay password 7"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolWorld]:
    with pool_world(tmp_path_factory.mktemp("weblab")) as found:
        yield found


def test_the_cli_end_to_end_over_the_overlay(world: PoolWorld, tmp_path: Path) -> None:
    user = CliUser(world.op, tmp_path / "config.json")
    login = ("--api", "100.64.0.1", "--user", "carol", "--password-stdin")
    registered = user.run("register", *login, stdin=PASSWORD + "\n")
    assert "carol" in registered.stdout
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o600
    wrong = user.run("login", *login, stdin="not the password\n", check=False)
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: wrong username or password")
    assert "Traceback" not in wrong.stderr
    user.run("login", *login, stdin=PASSWORD + "\n")
    before = user.json("balance")
    assert before["balance"] == 150

    work = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"  # enough CPU to cost something
    script = f"echo hello over the overlay; {work}; echo 42 > /out/answer.txt"
    image = ("--image", "hivemind/busybox:latest", "--cpu", "1", "--memory", "64M")
    task = user.json("submit", *image, "--timeout", "60", "--", "sh", "-c", script)
    assert task["status"] in ("queued", "assigned", "running") and task["cost"] is None
    done = user.json("wait", task["id"])
    assert done["status"] == "succeeded" and done["exit_code"] == 0
    assert done["node"] in ("w1", "w2") and done["attempt"] == 1
    assert user.run("logs", task["id"]).stdout == "hello over the overlay\n"
    user.run("result", task["id"], "-o", str(tmp_path / "out"))
    assert (tmp_path / "out" / "answer.txt").read_text() == "42\n"
    cost = user.settled(task["id"])["cost_micro"]
    after = user.json("balance")
    assert cost > 0 and after["balance_micro"] == before["balance_micro"] - cost
    moves = user.json("history")
    assert {m["task"] for m in moves if m["task"]} == {task["id"]}

    failing = user.json("submit", *image, "--", "sh", "-c", "exit 3")
    waited = user.run("wait", failing["id"], "--json", check=False)
    assert waited.returncode != 0 and json.loads(waited.stdout)["exit_code"] == 3
    assert [t["id"] for t in user.json("list")] == [failing["id"], task["id"]]
    nodes = {n["name"]: n for n in user.json("nodes")}
    assert nodes["w1"]["connected"] and nodes["w2"]["connected"]


def test_the_browser_registers_submits_watches_and_sees_the_mesh(world: PoolWorld) -> None:
    for problem in browser_prerequisites():
        require(False, problem)
    shots = artifacts_dir("web-mesh")
    result = run_in_host(
        world.op, "tests.e2e.web_browser", HUB_WEB, str(shots), "dave", PASSWORD, timeout=240
    )
    task = result["task"]
    assert task["statuses"][-1] == "succeeded" and task["updated_without_reload"] is True
    assert len(task["statuses"]) >= 2, task  # it changed on the page while we watched
    assert "from the browser" in task["logs"] and task["node"] in ("w1", "w2")
    assert task["price_cap"].endswith("CPT")
    assert world.status(task["task_id"])["owner"] == "user:dave"
    mesh = result["mesh"]
    assert mesh["online_workers"] == ["w1", "w2"]
    roles = {n["name"]: n["role"] for n in mesh["nodes"]}
    assert roles == {"hub": "hub", "w1": "worker", "w2": "worker", "op": "operator"}
    assert result["phone_page_width"] <= 400  # no sideways scrolling on a phone
    for name in ("01-register", "03-submit-form", "04-task-succeeded", "05-mesh", "06-mesh-phone"):
        png = shots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_web_answers_on_the_overlay_only(world: PoolWorld) -> None:
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], 5001), timeout=2).close(); print('open')\n"
        "except OSError:\n"
        "    print('closed')\n"
    )
    hub_underlay = world.hub.ip
    assert world.outsider.run(sys.executable, "-c", probe, hub_underlay).stdout.strip() == "closed"
    assert world.op.run(sys.executable, "-c", probe, hub_underlay).stdout.strip() == "closed"
    assert world.op.run(sys.executable, "-c", probe, "100.64.0.1").stdout.strip() == "open"


def test_the_hub_restarts_a_web_that_died(world: PoolWorld) -> None:
    run = json.loads((world.mesh.hub_dir / "run.json").read_text())
    assert run["web_url"] == HUB_WEB
    pids = pids_matching(world.hub, "hivemind_cluster.hub.cli web")  # this lab's web only
    assert len(pids) == 1
    world.hub.run("kill", "-9", str(pids[0]))
    deadline = time.monotonic() + 20
    fetch = "import urllib.request as u, sys; print(u.urlopen(sys.argv[1], timeout=2).status)"
    while True:
        answer = world.op.run(sys.executable, "-c", fetch, f"{HUB_WEB}/api/v1/rates", check=False)
        if answer.returncode == 0:
            break
        assert time.monotonic() < deadline, world.logs()
        time.sleep(0.3)
    assert "the web UI exited" in world.mesh.hub_log()
