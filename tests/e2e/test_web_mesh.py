"""End to end, as root: the web UI, its JSON API and the ``hivemind`` CLI over the overlay.

The hub started by ``hivemind-hub up`` serves the web on its overlay address; two Docker
workers run the tasks; everything user-side happens in the operator's namespace ``op``:
the real ``hivemind`` CLI, and headless Chromium (tests/e2e/web_browser.py) with
screenshots saved under build/artifacts/web-mesh/ (``$HIVEMIND_ARTIFACTS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.blobs import digest_hex, hash_file
from hivemind_cluster.web.constants import SLICE_BYTES
from tests.support.browser import artifacts_dir, browser_prerequisites, run_in_host
from tests.support.hostprocesses import pids_matching
from tests.support.lab import CliUser
from tests.support.poolworld import PoolWorld, pool_world
from tests.support.prerequisites import require
from tests.support.tasks import bundle_file

pytestmark = pytest.mark.privileged
HUB_WEB = "http://100.64.0.1:5001"
PASSWORD = "overlay password 7"
# The browser's bundle: main.py prints the SHA-256 of data.bin beside it.
PRINT_DATA_SHA256 = """\
import hashlib, pathlib
print(hashlib.sha256(pathlib.Path(__file__).with_name("data.bin").read_bytes()).hexdigest())
"""


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


def test_the_browser_uploads_a_bundle_in_slices_and_runs_it(
    world: PoolWorld, tmp_path: Path
) -> None:
    for problem in browser_prerequisites():
        require(False, problem)
    data = os.urandom(20 * MIB)  # random: the zip is as big, 3 slices of SLICE_BYTES
    bundle = bundle_file({"main.py": PRINT_DATA_SHA256, "data.bin": data}, tmp_path)
    other = bundle_file({"main.py": "print('the other bundle')\n"}, tmp_path)
    # Changed for ``other`` midway through its upload: one the browser never sent.
    fresh = bundle_file({"main.py": PRINT_DATA_SHA256, "data.bin": os.urandom(20 * MIB)}, tmp_path)
    size, digest = bundle.stat().st_size, hash_file(bundle).digest
    shots = artifacts_dir("web-upload")
    result = run_in_host(
        world.op,
        "tests.e2e.web_browser",
        *("upload", HUB_WEB, str(shots), "erin", PASSWORD, str(bundle), str(other), str(fresh)),
        timeout=300,
    )
    first, again, changed = result["first"], result["again"], result["changed"]
    # Slices of SLICE_BYTES; the lost answer (its bytes on the hub) and the failed question
    # after it: the script asks again where the hub got to and sends each byte once.
    slices = [str(offset) for offset in range(0, size, SLICE_BYTES)]
    assert len(slices) == 3 and calls_made(first) == [
        ("POST", None, None),
        ("PATCH", slices[0], None),
        ("PATCH", slices[1], "reply lost"),
        ("GET", None, "failed"),
        ("GET", None, None),
        ("PATCH", slices[2], None),
    ], first["calls"]
    assert sum(call["bytes"] or 0 for call in first["calls"]) == size
    assert first["progress"][-1] == [size, size], first["progress"]
    assert first["digest"] == again["digest"] == digest

    user = CliUser(world.op, tmp_path / "config.json")
    user.run(
        "login", "--api", "100.64.0.1", "--user", "erin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    expected = hashlib.sha256(data).hexdigest()
    for run in (first, again):
        task = user.json("status", run["task_id"])
        assert task["status"] == "succeeded" and task["bundle"] == digest, task
        assert user.run("logs", run["task_id"]).stdout == expected + "\n"
        assert expected in run["logs"]
    # The second choice of the file: the script remembers its digest (it cannot hash it: no
    # SHA-256 for scripts over plain http) and announces it; the hub holds it, nothing is sent.
    assert calls_made(again) == [("POST", None, None)], again["calls"]
    blobs = world.mesh.hub_dir / "blobs"
    assert len(list((blobs / "data").glob(f"*/{digest_hex(digest)}"))) == 1
    assert result["storage"]["used_bytes"] == size  # held once

    # Another file chosen while the first is uploading: the first stops after its slice in
    # flight and is cancelled on the hub (it would hold quota); the other goes.
    assert calls_made(changed) == [
        ("POST", None, None),
        ("PATCH", slices[0], None),
        ("PATCH", slices[1], "held"),
        ("POST", None, None),
        ("PATCH", "0", None),
        ("DELETE", None, None),
    ], changed["calls"]
    other_digest = hash_file(other).digest
    assert changed["digest"] == changed["form"]["digest"] == other_digest, changed["form"]
    task = user.json("status", changed["task_id"])
    assert task["status"] == "succeeded" and task["bundle"] == other_digest, task
    assert "the other bundle" in changed["logs"]
    assert list((blobs / "uploads").iterdir()) == []  # nothing left behind


def calls_made(run: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """The calls of the submit form's script to the uploads API: (method, offset, fault)."""
    return [(call["method"], call["offset"], call["fault"]) for call in run["calls"]]


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
