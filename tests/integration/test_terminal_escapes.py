"""Escape codes in untrusted text never reach the terminal, through every CLI listing.

A task command, a worker's error, node names, the hub's enrollment record and a server's
error message all carry ESC, CR, erase-line, window-title, C1 and bidi sequences; the real
console scripts (``hivemind``, ``hivemind-pool`` as an operator and as the hub,
``hivemind-hub``, ``hivemind-agent``) print them escaped, with no control character but the
newline, while ``--json`` keeps them exact — and a task's own log stays raw, as
``docker logs`` shows it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from hivemind_cluster.agent.taskrun import NO_USAGE, OnOutput, Outcome, TaskRun
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants as mesh_keys
from tests.support.hubstate import hub_state_dir, node_state_dir
from tests.support.lab import tool
from tests.support.webkit import PASSWORD, WebCluster, web_cluster
from tests.unit.test_agent_status import ENROLLMENT

pytestmark = pytest.mark.privileged
# Window title, erase line + carriage return, a C1 CSI, a bidi override, a bell.
HOSTILE = "\x1b]0;owned\x07\x1b[2K\rfake\x9b31m\u202eevil\x1b[0m\x07"
SHOWN = "\\x1b]0;owned\\x07\\x1b[2K\\x0dfake"  # how the start of it is printed
FORGED = "\nstatus    succeeded"  # a command argument that would print as a line of its own
BUSYBOX = ("--image", "hivemind/busybox:latest", "--cpu", "1", "--memory", "64M")


def hostile(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    on_output("stdout", (" ".join(task.command) + "\n").encode())
    if task.command[:1] == ["fail"]:
        return Outcome("failed", 1, f"it broke: {HOSTILE}", NO_USAGE, None)
    return Outcome("succeeded", 0, "", NO_USAGE, None)


def terminal_safe(text: str) -> bool:
    return all(c == "\n" or c.isprintable() for c in text)


@dataclass
class Tools:
    """The console scripts, each with what it needs to find the cluster."""

    world: WebCluster
    api: str
    config: Path
    operator: Path
    hub: Path

    def run(self, *command: str, fails: bool = False) -> str:
        """Everything the command printed (stdout, then stderr), checked terminal-safe."""
        done = self.call(*command)
        assert done.returncode == (1 if fails else 0), (done.stdout, done.stderr)
        printed = (done.stdout + done.stderr).decode()
        assert "Traceback" not in printed
        assert terminal_safe(printed), repr(printed)
        return printed

    def json(self, *command: str) -> Any:
        done = self.call(*command, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def call(self, *command: str) -> subprocess.CompletedProcess[bytes]:
        """The console script ``command[0]``, its output as bytes: text mode would turn a
        carriage return into a newline before the test could see it."""
        env = {**os.environ, "HIVEMIND_CONFIG": str(self.config)}
        return subprocess.run(
            [tool(command[0]), *command[1:]], env=env, capture_output=True, timeout=60
        )

    def pool(self, identity: Path, *command: str, fails: bool = False) -> str:
        verb, *rest = command
        return self.run("hivemind-pool", verb, "--identity", str(identity), *rest, fails=fails)

    def until_final(self, task_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while (task := self.json("hivemind", "status", task_id))["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
        return dict(task)


@pytest.fixture(scope="module")
def tools(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    root = tmp_path_factory.mktemp("escapes")
    with web_cluster(redis_server, root / "pool") as world:
        world.start_worker("w1", hostile)
        operator = world.run(world.cluster.add_node("op", "operator"))
        for node in ("w1", "op"):
            world.db().hset(mesh_keys.NODE.format(id=node), "name", f"{node}{HOSTILE}")
        server = make_server("127.0.0.1", 0, world.app(), threaded=True)
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        hub = hub_state_dir(world, root / "hub")
        try:
            found = Tools(
                world,
                f"http://127.0.0.1:{server.port}",
                root / "config.json",
                node_state_dir(operator, root / "operator"),
                hub.path,
            )
            found.run(
                "hivemind",
                "register",
                "--api",
                found.api,
                "--user",
                "alice",
                "--password",
                PASSWORD,
            )
            yield found
        finally:
            server.shutdown()
            serving.join(10)


def test_every_listing_escapes_what_the_task_and_nodes_carry(tools: Tools) -> None:
    ok = tools.run("hivemind", "submit", *BUSYBOX, "--", "echo", HOSTILE).strip()
    failed = tools.run("hivemind", "submit", *BUSYBOX, "--", "fail", HOSTILE, FORGED).strip()
    mine = tools.pool(tools.operator, "submit", *BUSYBOX, "--", "echo", HOSTILE).strip()
    assert tools.until_final(ok)["status"] == "succeeded"
    assert tools.until_final(failed)["status"] == "failed"
    listings = [
        tools.run("hivemind", "list"),
        tools.run("hivemind", "status", ok),
        tools.run("hivemind", "status", failed),
        tools.run("hivemind", "nodes"),
        tools.pool(tools.operator, "list"),
        tools.pool(tools.operator, "status", mine),
        tools.pool(tools.operator, "nodes"),
        tools.pool(tools.hub, "list"),
        tools.pool(tools.hub, "status", failed),
        tools.pool(tools.hub, "nodes"),
        tools.run("hivemind-hub", "nodes", "--state-dir", str(tools.hub)),
    ]
    for printed in listings:
        assert SHOWN in printed or "w1\\x1b]0;owned" in printed or "op\\x1b]0;owned" in printed
    status = tools.run("hivemind", "status", failed)
    assert f"it broke: {SHOWN}" in status
    assert "status    succeeded" not in status.splitlines(), status  # no forged line


def test_json_keeps_the_text_exact_and_logs_stay_raw(tools: Tools) -> None:
    task_id = tools.run("hivemind", "submit", *BUSYBOX, "--", "fail", HOSTILE).strip()
    assert tools.until_final(task_id)["error"] == f"it broke: {HOSTILE}"
    assert tools.json("hivemind", "status", task_id)["command"] == ["fail", HOSTILE]
    names = {
        n["id"]: n["name"]
        for n in tools.json("hivemind-pool", "nodes", "--identity", str(tools.hub))
    }
    assert names["w1"] == f"w1{HOSTILE}" and names["op"] == f"op{HOSTILE}"
    hub_names = {
        n["id"]: n["name"]
        for n in tools.json("hivemind-hub", "nodes", "--state-dir", str(tools.hub))
    }
    assert hub_names["w1"] == f"w1{HOSTILE}"
    logs = tools.call("hivemind", "logs", task_id).stdout.decode()
    assert logs == f"fail {HOSTILE}\n"  # the task's own output, as it wrote it


class HostileApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"error": {"code": "invalid_input", "message": HOSTILE}}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_errors_from_servers_and_records_are_escaped(tools: Tools, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        assert "owned" in tools.run("hivemind", "rates", "--api", api, fails=True)
    finally:
        server.shutdown()
        server.server_close()
    tools.pool(tools.operator, "submit", "--image", f"busybox{HOSTILE}", "--", "x", fails=True)
    agent = tmp_path / "agent"
    agent.mkdir()
    dataclasses.replace(
        ENROLLMENT,
        name=f"laptop{HOSTILE}",
        hub_endpoint=f"192.0.2.1:51820{HOSTILE}",
        interface="hm-esc0",
    ).save(agent)
    shown = tools.run("hivemind-agent", "status", "--state-dir", str(agent))
    assert "laptop\\x1b]0;owned" in shown
    assert tools.json("hivemind-agent", "status", "--state-dir", str(agent))["name"] == (
        f"laptop{HOSTILE}"
    )
