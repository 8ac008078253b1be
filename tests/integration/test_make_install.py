"""``make install`` (scripts/install.sh) on this machine, as root, under a test prefix: a hub
installed from the clone, its unit, an installer written by the installed hub from the
wheelhouse it keeps, a second run that changes nothing, and ``make uninstall``.

The bin and unit directories are temporary too, and ``--service-manager none`` keeps
systemd out of it (it is not running here); tests/e2e/test_install.py runs what the hub's
installer installs on a new machine.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.prerequisites import REPO, require

pytestmark = pytest.mark.privileged
BARE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def make(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """scripts/install.sh as ``make install`` runs it, everything it writes under ``root``."""
    env = {"PATH": BARE_PATH, "HOME": str(root), "ROLE": "hub", "PREFIX": str(root / "opt")}
    env["ENDPOINT"] = "hub.example.org:7443"
    places = ["--bin-dir", str(root / "bin"), "--systemd-dir", str(root / "units")]
    places += ["--state-dir", str(root / "state"), "--service-manager", "none"]
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), *extra, *places],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )


def installed(root: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "bin" / script), *args],
        capture_output=True,
        text=True,
        env={"PATH": BARE_PATH, "HOME": str(root)},
        cwd=root,
        check=False,
        timeout=120,
    )


def test_make_install_a_hub_then_its_installer_then_make_uninstall(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "make install needs root")
    first = make(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"installed HiveMind 0.1.0 in {tmp_path / 'opt'}" in first.stdout
    assert f"initialised the hub in {tmp_path / 'state'} (endpoint hub.example.org:7443)" in (
        first.stdout
    )
    assert (tmp_path / "state" / "hub.toml").exists() and "next:" not in first.stderr
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == [
        "hivemind",
        "hivemind-hub",
        "hivemind-pool",
    ]
    python = str(tmp_path / "opt" / "venv" / "bin" / "python")
    assert subprocess.run([python, "-c", "import flask, redis"], cwd=tmp_path).returncode == 0
    docker = subprocess.run([python, "-c", "import docker"], cwd=tmp_path, capture_output=True)
    assert docker.returncode == 1
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(tmp_path / "units" / "hivemind-hub.service")
    assert unit["Unit"]["ConditionPathExists"] == str(tmp_path / "state" / "hub.toml")
    assert unit["Service"]["ExecStart"] == (
        f"{tmp_path}/opt/venv/bin/hivemind-hub up --state-dir {tmp_path / 'state'}"
    )

    again = make(tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("nothing changed"), again.stdout

    # The installed hub writes an agent installer from the wheelhouse it kept.
    state = str(tmp_path / "state")
    made = installed(
        tmp_path, "hivemind-hub", "installer", "--state-dir", state, "--no-token", "--json",
        "-o", str(tmp_path / "agent.sh"),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["token_id"] is None
    assert (tmp_path / "agent.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "agent.sh").read_bytes().startswith(b"#!/bin/sh\n")

    removed = make(tmp_path, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (tmp_path / "opt").exists() and list((tmp_path / "bin").iterdir()) == []
    assert not (tmp_path / "units" / "hivemind-hub.service").exists()
    assert (tmp_path / "state" / "hub.toml").exists()  # the hub's identity stays
    nothing = make(tmp_path, "--uninstall")
    assert nothing.stdout.startswith("nothing to remove"), nothing.stdout
