"""``hivemind`` (the real console script, one process per command) against the real web
app served over HTTP on loopback, over a real pool with real Redis and a scripted worker.

The worker's behaviour is chosen by the command: ``copy …`` prints its command and
returns the input bundle as its output, ``inputs`` prints each input's name, kind and
digest as the worker fetched it, ``fail`` exits 3, ``slow`` prints three lines over a
second, ``block`` runs until cancelled. Every task is charged a measured usage, so every
settlement moves CPT.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from hivemind_cluster.agent.taskrun import OnOutput, Outcome, ResultFile, TaskRun, Usage
from hivemind_cluster.client.apiclient import ApiClient
from hivemind_cluster.core.errors import Unauthenticated
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.blobs import hash_file
from hivemind_cluster.pool.ledger import Ledger
from tests.support.lab import tool
from tests.support.poolkit import block_until_cancelled
from tests.support.webkit import PASSWORD, WebCluster, web_cluster

pytestmark = pytest.mark.privileged
USAGE = Usage(cpu_seconds=2.5, peak_memory_bytes=200_000_000, wall_seconds=3.0, gpu_seconds=0.0)
BUSYBOX = ("--image", "hivemind/busybox:latest", "--cpu", "1", "--memory", "64M")
NAMES = itertools.count(1)


def scripted(results: Path) -> Callable[[TaskRun, OnOutput, threading.Event], Outcome]:
    """The worker's behaviours; a result is a copy of the bundle in ``results`` (the worker
    removes a result file once the pool has it)."""
    copies = itertools.count()

    def run(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        verb = task.command[0] if task.command else ""
        if verb == "block":
            return block_until_cancelled(task, on_output, cancel)
        if verb == "fail":
            on_output("stderr", b"boom\n")
            return Outcome("failed", 3, "exit code 3", USAGE)
        if verb == "slow":
            for tick in range(3):
                on_output("stdout", f"tick {tick}\n".encode())
                time.sleep(0.4)
        elif verb == "inputs":
            for item in task.inputs:
                digest = hash_file(item.path).digest
                on_output("stdout", f"{item.name} {item.kind} {digest}\n".encode())
        else:
            on_output("stdout", (" ".join(task.command) + "\n").encode())
        if task.bundle is None:
            return Outcome("succeeded", 0, "", USAGE)
        output = results / f"result-{next(copies)}.zip"
        shutil.copyfile(task.bundle, output)
        found = hash_file(output)
        return Outcome("succeeded", 0, "", USAGE, ResultFile(output, found.digest, found.size))

    return run


@dataclass
class Site:
    url: str
    world: WebCluster


@pytest.fixture(scope="module")
def site(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("cli-api")
    (root / "results").mkdir()
    with web_cluster(redis_server, root / "state") as world:
        world.start_worker("w1", scripted(root / "results"))
        server = make_server("127.0.0.1", 0, world.app(), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield Site(f"http://127.0.0.1:{server.port}", world)
        finally:
            server.shutdown()
            thread.join(timeout=10)


@dataclass
class User:
    """Runs ``hivemind`` with its own config file."""

    site: Site
    name: str
    config: Path

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        # The user's own digest cache too (XDG_CACHE_HOME), never the real one.
        env = {"HIVEMIND_CONFIG": str(self.config), "XDG_CACHE_HOME": str(self.config.parent)}
        result = subprocess.run(
            [tool("hivemind"), *args],
            env=os.environ | env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, command: str, *args: str) -> Any:
        return json.loads(self.ok(command, "--json", *args))

    def fails(self, *args: str) -> str:
        """The one line of a command that must fail with exit status 1."""
        result = self.run(*args)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        return result.stderr.removeprefix("error: ").rstrip("\n")

    def register(self) -> str:
        return self.ok(
            "register", "--api", self.site.url, "--user", self.name, "--password", PASSWORD
        )

    def submit(self, *command: str, options: tuple[str, ...] = ()) -> str:
        return self.ok("submit", *BUSYBOX, *options, "--", *command).strip()

    def until(self, task_id: str, ready: Any, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, Any] = self.json("status", task_id)
            if ready(task):
                return task
            assert time.monotonic() < deadline, f"task {task_id} stayed {task['status']}"
            time.sleep(0.2)


@pytest.fixture
def user(site: Site, tmp_path: Path) -> User:
    """A registered, logged-in user of their own."""
    member = User(site, f"user{next(NAMES)}", tmp_path / "config" / "hivemind.json")
    member.register()
    return member


def test_register_and_login_keep_a_private_token(site: Site, tmp_path: Path) -> None:
    config = tmp_path / "home" / "hivemind" / "config.json"
    carol = User(site, "carol", config)
    api = f"{site.url}/api/v1"
    assert carol.register() == (
        f"registered carol: account user:carol, 150 CPT\n"
        f"logged in as carol at {api} (token saved in {config})\n"
    )
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    first = json.loads(config.read_text())
    assert (first["api"], first["username"], len(first["token"]) >= 20) == (api, "carol", True)

    login = carol.run(
        "login", "--json", "--api", site.url, "--user", "carol", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert json.loads(login.stdout) == {"username": "carol", "api": api, "config": str(config)}
    second = json.loads(config.read_text())
    assert second["token"] != first["token"] and second["token"] not in login.stdout
    assert carol.json("balance") == {
        "account": "user:carol",
        "kind": "user",
        "balance": 150,
        "balance_micro": 150_000_000,
        "earned": 0,
        "earned_micro": 0,
    }

    wrong = ("login", "--api", site.url, "--user", "carol", "--password", "not the password")
    assert carol.fails(*wrong) == "wrong username or password"
    assert json.loads(config.read_text()) == second  # a failed login changes nothing
    taken = ("register", "--api", site.url, "--user", "carol", "--password", PASSWORD)
    assert carol.fails(*taken) == "the username 'carol' is taken"

    assert carol.ok("logout") == "logged out carol\n"
    assert json.loads(config.read_text())["token"] == ""
    with pytest.raises(Unauthenticated):  # revoked on the hub, not only forgotten
        ApiClient(api, second["token"]).balance("")
    assert carol.fails("balance") == f"not logged in at {api}: run hivemind login --api {api}"


def test_a_task_from_submission_to_settlement(user: User, tmp_path: Path) -> None:
    before = user.json("balance")
    job = tmp_path / "job"
    (job / "data").mkdir(parents=True)
    (job / "data" / "input.txt").write_text("payload\n")
    submitted = user.json("submit", *BUSYBOX, "--bundle", str(job), "--", "copy", "hello")
    assert {"id", "status", "node", "attempt", "exit_code", "cost"} <= submitted.keys()
    assert (submitted["status"], submitted["cost"], submitted["price_cap"] > 0) == (
        "queued",
        None,
        True,
    )
    task_id = submitted["id"]

    waited = user.run("wait", task_id)
    assert waited.returncode == 0, waited.stderr
    assert "status    succeeded, exit code 0" in waited.stdout
    assert user.ok("logs", task_id) == "copy hello\n"
    out = tmp_path / "results"
    assert user.ok("result", task_id, "-o", str(out)) == f"1 files from {task_id} in {out}\n"
    assert (out / "data" / "input.txt").read_text() == "payload\n"

    task = user.until(task_id, lambda t: t["settled"])
    assert (task["node"], task["attempt"], task["exit_code"]) == ("name-w1", 1, 0)
    assert task["cost_micro"] > 0 and task["cost"] == task["cost_micro"] / 1_000_000
    after = user.json("balance")
    assert isinstance(after["balance"], int | float)
    assert after["balance_micro"] == before["balance_micro"] - task["cost_micro"]
    assert round((before["balance"] - after["balance"]) * 1_000_000) == task["cost_micro"]

    account = f"user:{user.name}"
    moved = {
        (e["from"], e["to"]): e["amount_micro"]
        for e in user.json("history")
        if e["task"] == task_id
    }
    assert moved == {
        (account, "escrow"): task["price_cap_micro"],  # held at submission
        ("escrow", account): task["price_cap_micro"] - task["cost_micro"],  # the rest back
    }
    assert user.ok("history").splitlines()[0].split() == ["ID", "FROM", "TO", "AMOUNT", "REASON"]

    listed = user.json("list", "--status", "succeeded")
    assert [t["id"] for t in listed] == [task_id]
    assert task_id in user.ok("list")


def test_inputs_go_up_once_and_reach_the_worker(user: User, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 << 20))
    (tmp_path / "tables" / "sub").mkdir(parents=True)
    (tmp_path / "tables" / "sub" / "a.csv").write_text("1,2\n")
    options = ("--input", str(data), "--input", f"t={tmp_path / 'tables'}")
    first = user.json("submit", *BUSYBOX, *options, "--", "inputs")
    uploads = {u["name"]: u for u in first["uploads"]}
    assert uploads["data.bin"]["sent_bytes"] == uploads["data.bin"]["size"] == 3 << 20
    assert uploads["t"]["sent_bytes"] == uploads["t"]["size"] > 0
    assert user.run("wait", first["id"]).returncode == 0
    assert user.ok("logs", first["id"]) == (
        f"data.bin file {uploads['data.bin']['digest']}\nt dir {uploads['t']['digest']}\n"
    )
    shown = user.ok("status", first["id"])
    assert f"inputs    /work/inputs/data.bin (file, 3 MiB) {uploads['data.bin']['digest']}" in shown

    again = user.run("submit", *BUSYBOX, *options, "--", "inputs")
    assert again.returncode == 0 and again.stderr == (
        "input data.bin: already on the hub (3 MiB), nothing sent\n"
        f"input t: already on the hub ({uploads['t']['size']} B), nothing sent\n"
    )


def test_a_result_is_kept_as_a_zip_or_resumed_with_a_range(user: User, tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "x.txt").write_text("x\n")
    task_id = user.submit("copy", options=("--bundle", str(job)))
    assert user.run("wait", task_id).returncode == 0
    kept = tmp_path / "kept" / "result.zip"
    assert user.json("result", task_id, "--zip", str(kept)) == {
        "id": task_id,
        "zip": str(kept),
        "files": ["x.txt"],
    }
    assert sorted(os.listdir(kept.parent)) == ["result.zip"]

    zipped = kept.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    part = out / f".hivemind-result-{task_id}.zip.part"
    part.write_bytes(zipped[:50])  # a download cut at 50 bytes: resumed from there
    assert user.ok("result", task_id, "-o", str(out)) == f"1 files from {task_id} in {out}\n"
    assert sorted(os.listdir(out)) == ["x.txt"]
    # The hub sent only the rest (Range, If-Range matched): a wrong prefix shows it.
    (out / "x.txt").unlink()
    part.write_bytes(b"?" * 50)
    assert "removed; run the command again" in user.fails("result", task_id, "-o", str(out))
    assert not part.exists()
    assert user.ok("result", task_id, "-o", str(out)) == f"1 files from {task_id} in {out}\n"


def test_wait_exits_non_zero_when_the_task_did_not_succeed(user: User) -> None:
    task_id = user.submit("fail")
    waited = user.run("wait", task_id)
    assert waited.returncode == 1
    assert "status    failed, exit code 3" in waited.stdout
    assert user.run("submit", "--wait", *BUSYBOX, "--", "fail").returncode == 1
    assert "\nboom\n" in user.run("logs", task_id).stderr


def test_logs_follow_streams_until_the_task_ends(user: User) -> None:
    task_id = user.submit("slow")
    assert user.ok("logs", "-f", task_id) == "tick 0\ntick 1\ntick 2\n"
    assert user.json("status", task_id)["status"] == "succeeded"


def test_cancel_a_running_task(user: User) -> None:
    task_id = user.submit("block")
    user.until(task_id, lambda t: t["status"] == "running")
    assert user.json("cancel", task_id)["id"] == task_id
    assert user.run("wait", task_id, "--timeout", "20").returncode == 1
    assert user.json("status", task_id)["status"] == "cancelled"
    assert user.json("list", "--status", "cancelled")[0]["id"] == task_id


def test_tips_go_to_a_project(user: User, site: Site) -> None:
    db = site.world.db()
    Ledger(db).open_account("project:demo", "project")
    db.close()
    before = user.json("balance")["balance_micro"]
    assert user.ok("tip", "project:demo", "2.5") == "tipped 2.5 CPT to project:demo\n"
    assert user.json("balance")["balance_micro"] == before - 2_500_000
    latest = user.json("history")[-1]  # oldest first
    assert (latest["to"], latest["amount"], latest["amount_micro"]) == (
        "project:demo",
        2.5,
        2_500_000,
    )
    assert "project:nothing" in user.fails("tip", "project:nothing", "1")
    assert (
        user.fails("tip", "project:demo", "0.0000001")
        == "amount '0.0000001' has more than 6 decimals"
    )


def test_nodes_and_rates(user: User, site: Site, tmp_path: Path) -> None:
    nodes = user.json("nodes")
    workers = [n for n in nodes if n["role"] == "worker"]
    assert [(n["name"], n["connected"]) for n in workers] == [("name-w1", True)]
    assert user.ok("nodes").splitlines()[0].split()[:3] == ["ID", "NAME", "ROLE"]
    stranger = User(site, "nobody", tmp_path / "none.json")  # the rate card is public
    assert stranger.json("rates", "--api", site.url)["cpu_second"] == 0.0001
    assert "cpu_second" in user.ok("rates")


def test_bad_input_is_one_line_without_a_traceback(user: User, site: Site, tmp_path: Path) -> None:
    assert user.fails("status", "t-nope") == "no task 't-nope'"
    assert user.fails("result", "t-nope", "-o", str(tmp_path / "r")) == "no task 't-nope'"
    assert "no node could ever run this task" in user.fails(
        "submit", "--image", "hivemind/busybox:latest", "--cpu", "64", "--", "true"
    )
    assert user.fails("submit", "--cpu", "lots", "--", "true").startswith("cpu")
    assert user.fails("submit", "--env", "NOEQUALS", "--", "true") == (
        "--env 'NOEQUALS' is not KEY=VALUE"
    )
    stranger = User(site, "nobody", tmp_path / "none.json")
    assert stranger.fails("list") == "not logged in: run hivemind login --api URL"
    assert stranger.fails(
        "login", "--api", site.url, "--user", "nobody", "--password", "x" * 9
    ) == ("wrong username or password")
    down = ("login", "--api", "127.0.0.1:1", "--user", "nobody", "--password", "x" * 9)
    assert stranger.fails(*down) == (
        "the HiveMind API at http://127.0.0.1:1/api/v1 refused the connection "
        "(is the hub's web server running?)"
    )
    assert not stranger.config.exists()
