"""Installing on new machines, end to end, as root: the hub's installer and the laptop CLI.

A hub runs in namespace ``hub`` (from this clone). ``hivemind-hub installer`` writes one
file; the "new machine" ``new`` runs it with ``sh`` under a test prefix, with a bare
``PATH`` (this project's .venv is not on it) and no package index reachable (the
namespace has no route out), joins as a worker and runs a task. The ``laptop`` joins the
overlay as an operator and installs only the user CLI (``hivemind-cluster[cli]``) from the
same wheelhouse: no Flask, Docker or Redis, yet it registers, submits and fetches results.
systemd cannot run in a namespace, so the installer starts the agent directly
(``--service-manager direct``) and the unit file it writes is checked.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.lab import Host, Lab, Mesh
from tests.support.poolworld import remove_containers
from tests.support.prerequisites import require, require_root_network
from tests.support.wheelhouse import build_wheelhouse

pytestmark = pytest.mark.privileged
BARE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWORD = "installed laptop 4"


@dataclass
class Machine:
    """A namespace host and where the installer puts things on it."""

    host: Host
    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt-hivemind"

    @property
    def state_dir(self) -> Path:
        return self.root / "var-lib-hivemind-agent"

    def bare(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """A command with the environment of a fresh root login, run in the machine's own
        directory: nothing of this project (not even the clone as the working directory)."""
        env = {"PATH": BARE_PATH, "HOME": str(self.root), "LANG": "C.UTF-8"}
        self.root.mkdir(exist_ok=True)
        chdir = ("env", f"--chdir={self.root}")
        return self.host.run(*chdir, *argv, env=env, check=check, timeout=300)

    def install(self, installer: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.bare(
            "sh",
            str(installer),
            "--prefix",
            str(self.prefix),
            "--bin-dir",
            str(self.root / "bin"),
            "--systemd-dir",
            str(self.root / "systemd"),
            "--state-dir",
            str(self.state_dir),
            "--interface",
            self.host.wg_interface,
            "--name",
            self.host.name,
            "--service-manager",
            "direct",
            *extra,
        )


@dataclass
class World:
    mesh: Mesh
    new: Machine
    laptop: Host
    installer: Path
    wheelhouse: Path
    token_id: str
    first_run: subprocess.CompletedProcess[str]


def node_of(machine: Machine) -> dict[str, Any]:
    enrollment: dict[str, Any] = json.loads((machine.state_dir / "agent.json").read_text())
    return enrollment


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root_network()
    info = subprocess.run(["docker", "info"], capture_output=True, check=False)
    require(info.returncode == 0, "dockerd is not running (make setup)")
    wheelhouse = build_wheelhouse()
    work = tmp_path_factory.mktemp("install")
    lab = Lab(work)
    node_ids = []
    try:
        mesh = Mesh(lab, lab.add_host("hub"))
        new = Machine(lab.add_host("new"), work / "new")
        laptop = lab.add_host("laptop")
        new.root.mkdir()
        mesh.start_hub()
        installer = work / "hivemind-install.sh"
        made = mesh.hub_cli(
            "installer", "-o", str(installer), "--wheelhouse", str(wheelhouse), "--json"
        )
        written = json.loads(made.stdout)
        assert written["role"] == "worker" and written["path"] == str(installer)
        # Before: the system's Python knows no HiveMind.
        before = new.bare("python3", "-c", "import hivemind_cluster")
        assert before.returncode == 1 and "No module named" in before.stderr
        first_run = new.install(installer)
        if (new.state_dir / "agent.json").exists():
            node_ids.append(node_of(new)["node_id"])
        yield World(mesh, new, laptop, installer, wheelhouse, written["token_id"], first_run)
    finally:
        lab.close()
        for node_id in node_ids:
            remove_containers(node_id)


def test_the_installer_installs_offline_joins_and_starts_the_agent(world: World) -> None:
    assert world.installer.stat().st_mode & 0o777 == 0o700  # it holds a join token
    assert world.installer.read_bytes().startswith(b"#!/bin/sh\n")
    run = world.first_run
    assert run.returncode == 0, run.stdout + run.stderr
    assert "hm1_" not in run.stdout + run.stderr  # the token is never printed
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"installed HiveMind 0.1.0 in {world.new.prefix}")
    assert any(line.startswith("joined as n") for line in lines), lines
    assert lines[-1] == "started hivemind-agent", lines
    node = node_of(world.new)
    online = {n["name"]: n for n in world.mesh.nodes()}
    assert online["new"]["online"] and online["new"]["id"] == node["node_id"]
    # The service that runs is the installed one, from the prefix's environment.
    pid = int((world.new.state_dir / "agent.pid").read_text())
    command = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert any(part.startswith(f"{world.new.prefix}/venv") for part in command), command
    # The unit file it wrote runs the same command, once the machine has joined.
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(world.new.root / "systemd" / "hivemind-agent.service")
    exec_start = unit["Service"]["ExecStart"]
    assert exec_start == f"{world.new.prefix}/venv/bin/hivemind-agent run --state-dir " + str(
        world.new.state_dir
    )
    assert " ".join(part for part in command[1:] if part) == exec_start
    assert unit["Unit"]["ConditionPathExists"] == str(world.new.state_dir / "agent.json")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # The console scripts are linked; the system's Python still knows no HiveMind.
    version = world.new.bare(str(world.new.root / "bin" / "hivemind-agent"), "--help")
    assert version.returncode == 0 and "join" in version.stdout
    assert world.new.bare("python3", "-c", "import hivemind_cluster").returncode == 1
    # An agent's environment has Docker and no web stack.
    python = str(world.new.prefix / "venv" / "bin" / "python")
    assert world.new.bare(python, "-c", "import docker, psutil").returncode == 0
    assert world.new.bare(python, "-c", "import flask").returncode == 1
    assert world.new.bare(python, "-c", "import redis").returncode == 1


def test_the_laptop_cli_alone_runs_a_task_on_the_installed_worker(
    world: World, tmp_path: Path
) -> None:
    world.mesh.wait_for_workers(1, agents=())
    world.mesh.join(world.laptop, world.mesh.token(role="operator"))
    venv = tmp_path / "cli"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-index"]
    subprocess.run(
        [*pip, "--find-links", str(world.wheelhouse), "hivemind-cluster[cli]"],
        check=True,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    laptop = Machine(world.laptop, tmp_path)
    for library in ("flask", "docker", "redis", "werkzeug", "argon2"):
        absent = laptop.bare(str(venv / "bin" / "python"), "-c", f"import {library}")
        assert absent.returncode == 1 and "No module named" in absent.stderr, library
    hivemind = str(venv / "bin" / "hivemind")
    assert laptop.bare(hivemind, "--help", check=True).stdout.startswith("usage: hivemind")
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path), "HIVEMIND_CONFIG": str(tmp_path / "c.json")}

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return world.laptop.run(hivemind, *args, env=env, input=stdin, timeout=180)

    login = ("--api", "100.64.0.1", "--user", "erin", "--password-stdin")
    assert "erin" in cli("register", *login, stdin=PASSWORD + "\n").stdout
    assert "erin" in cli("login", *login, stdin=PASSWORD + "\n").stdout
    image = ("--image", "hivemind/busybox:latest", "--cpu", "0.5", "--memory", "64M")
    script = "echo installed > /out/where.txt"
    task = json.loads(cli("submit", "--json", *image, "--", "sh", "-c", script).stdout)
    done = json.loads(cli("wait", "--json", task["id"]).stdout)
    assert done["status"] == "succeeded" and done["node"] == "new", done
    cli("result", task["id"], "-o", str(tmp_path / "out"))
    assert (tmp_path / "out" / "where.txt").read_text() == "installed\n"


def test_a_second_run_changes_nothing(world: World) -> None:
    pid = (world.new.state_dir / "agent.pid").read_text()
    again = world.new.install(world.installer)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("nothing changed"), again.stdout
    assert (world.new.state_dir / "agent.pid").read_text() == pid  # not restarted
    tokens = json.loads(world.mesh.hub_cli("token", "list", "--json").stdout)
    assert {t["id"]: t["state"] for t in tokens}[world.token_id] == "used"
    workers = [n for n in world.mesh.nodes("--all") if n["role"] == "worker"]
    assert [n["name"] for n in workers] == ["new"]


def test_bad_runs_say_why_in_one_line_and_change_nothing(world: World, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.sh"
    damaged.write_bytes(world.installer.read_bytes()[:-300_000])
    other = Machine(world.laptop, tmp_path)
    broken = other.install(damaged)
    assert broken.returncode == 1 and "is damaged" in broken.stderr, broken.stderr
    # An installer whose token has expired: refused before anything is installed.
    expired = tmp_path / "expired.sh"
    world.mesh.hub_cli("installer", "-o", str(expired), "--token-ttl", "1s", "--wheelhouse",
                       str(world.wheelhouse))  # fmt: skip
    time.sleep(1.5)
    late = other.install(expired)
    assert late.returncode == 1, late.stderr
    assert late.stderr.splitlines()[-1].startswith("error: the join token inside expired at ")
    assert not other.prefix.exists() and not other.state_dir.exists()
    # Not a token: refused before anything is installed.
    garbled = other.install(world.installer, "hm1_not\x1b[31ma-token")
    assert garbled.returncode == 1, garbled.stderr
    assert garbled.stderr.splitlines() == ["error: that is not a join token (hm1_…)"]
    assert not other.prefix.exists() and not other.state_dir.exists()
