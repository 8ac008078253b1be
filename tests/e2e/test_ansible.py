"""The Ansible playbook against real hosts: a hub and two agents in network namespaces,
each running its own sshd, provisioned from a controller namespace over SSH.

systemd cannot run as PID 1 in a network namespace, so the test says so, runs the roles
with ``hivemind_service_manager=direct`` (the unit files are installed and checked; their
``ExecStart`` commands are started directly). HiveMind is installed from the roles'
default source: the controller's wheelhouse (``build/wheelhouse``, built as ``make
wheelhouse`` does), copied to every host and installed with no package index.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import Lab, tool
from tests.support.prerequisites import REPO, require, require_root_network
from tests.support.wheelhouse import build_wheelhouse

pytestmark = pytest.mark.privileged
SSHD_CONFIG = """\
ListenAddress {ip}
HostKey {dir}/host_key
PidFile {dir}/sshd-{name}.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""


class Site:
    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab, self.work = lab, work
        self.controller = lab.add_host("ctl")
        self.hub = lab.add_host("hub")
        self.agents = [lab.add_host("a1"), lab.add_host("a2")]
        self.ssh_dir = work / "ssh"
        self.inventory = work / "inventory.ini"

    def start_sshd(self) -> None:
        self.ssh_dir.mkdir()
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh_dir / "host_key")],
            check=True,
        )
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh_dir / "id")],
            check=True,
        )
        shutil.copy(self.ssh_dir / "id.pub", self.ssh_dir / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)
        for host in [self.hub, *self.agents]:
            config = self.ssh_dir / f"sshd-{host.name}.conf"
            config.write_text(SSHD_CONFIG.format(ip=host.ip, dir=self.ssh_dir, name=host.name))
            host.popen(
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
                str(config),
                log=self.work / f"sshd-{host.name}.log",
            )

    def write_inventory(self) -> None:
        # The hosts share one filesystem: each gets its own copy of the wheelhouse.
        hub, prefix = self.hub, self.lab.prefix
        lines = [
            "[hivemind_hub]",
            f"hub ansible_host={hub.ip} hivemind_endpoint={hub.ip}:7443 "
            f"hivemind_hub_state_dir={self.work}/hub-state "
            f"hivemind_hub_interface={hub.wg_interface} hivemind_venv={self.work}/venv-hub "
            f"hivemind_hub_unit={prefix}-hivemind-hub "
            f"hivemind_wheelhouse_dir={self.work}/wheels-hub",
            "",
            "[hivemind_agents]",
        ]
        for agent in self.agents:
            lines.append(
                f"{agent.name} ansible_host={agent.ip} "
                f"hivemind_agent_state_dir={self.work}/{agent.name}-state "
                f"hivemind_agent_interface={agent.wg_interface} "
                f"hivemind_venv={self.work}/venv-{agent.name} "
                f"hivemind_agent_unit={prefix}-hivemind-agent-{agent.name} "
                f"hivemind_wheelhouse_dir={self.work}/wheels-{agent.name}"
            )
        lines += [
            "",
            "[all:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self.ssh_dir}/id",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
            "ansible_python_interpreter=/usr/bin/python3",
            "hivemind_service_manager=direct",
            f"hivemind_systemd_dir={self.work}/systemd",
            f"hivemind_log_dir={self.work}/logs",
        ]
        self.inventory.write_text("\n".join(lines) + "\n")

    def playbook(self) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_RETRY_FILES_ENABLED="False",
        )
        return self.controller.run(
            tool("ansible-playbook"),
            "-i",
            str(self.inventory),
            str(REPO / "ansible" / "site.yml"),
            check=False,
            timeout=900,
            env=env,
        )

    def hub_cli(self, *args: str) -> str:
        return self.hub.run(
            str(self.work / "venv-hub" / "bin" / "hivemind-hub"),
            *args,
            "--state-dir",
            str(self.work / "hub-state"),
        ).stdout


def running_commands() -> list[str]:
    """Every process's command line, less a leading interpreter (scripts run as
    ``python3 <script> …``)."""
    commands = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue
        if argv and Path(argv[0]).name.startswith("python"):
            argv = argv[1:]
        commands.append(" ".join(argv))
    return commands


def recap(output: str) -> dict[str, dict[str, int]]:
    """``PLAY RECAP`` lines -> {host: {ok: n, changed: n, failed: n, …}}."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            hosts[match.group(1)] = {
                k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))
            }
    return hosts


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_root_network()
    require(
        shutil.which("ansible-playbook") is not None or Path(tool("ansible-playbook")).exists(),
        "ansible-core is not installed (make setup)",
    )
    require(Path("/usr/sbin/sshd").exists(), "openssh-server is not installed (make setup)")
    # Where the roles look by default ({{ playbook_dir }}/../build/wheelhouse).
    assert build_wheelhouse() == REPO / "build" / "wheelhouse"
    work = tmp_path_factory.mktemp("ansible")
    lab = Lab(work)
    try:
        site = Site(lab, work)
        site.start_sshd()
        site.write_inventory()
        yield site
    finally:
        lab.close()


def test_playbook_provisions_a_hub_and_two_agents(site: Site) -> None:
    warnings.warn(
        "systemd cannot run in network-namespace hosts: the unit files are "
        "verified and their commands started directly (hivemind_service_manager="
        "direct)",
        stacklevel=1,
    )
    first = site.playbook()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    hosts = recap(first.stdout)
    assert sorted(hosts) == ["a1", "a2", "hub"], first.stdout[-4000:]
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in hosts.values())
    assert "hm1_" not in first.stdout + first.stderr  # join tokens never reach the log
    nodes = json.loads(site.hub_cli("nodes", "--json"))
    workers = {n["name"]: n for n in nodes if n["role"] == "worker"}
    assert sorted(workers) == ["a1", "a2"]
    assert all(n["online"] for n in workers.values())
    a1, a2 = site.agents
    assert a1.reaches(workers["a2"]["overlay_ip"])
    assert a2.reaches("100.64.0.1")


def test_workers_register_with_the_pool_ready_for_docker_tasks(site: Site) -> None:
    deadline = time.monotonic() + 30
    while True:
        nodes = json.loads(
            site.hub.run(
                tool("hivemind-pool"), "nodes", "--identity", str(site.work / "hub-state"), "--json"
            ).stdout
        )
        workers = {n["name"]: n for n in nodes if n["role"] == "worker" and n["connected"]}
        if sorted(workers) == ["a1", "a2"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(workers) == ["a1", "a2"], nodes
    assert all(w["docker_version"] and w["state"] == "ready" for w in workers.values())
    # The hub's web UI came up with it, on the overlay: an agent reads the rate card.
    fetch = (
        "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    rates = json.loads(
        site.agents[0]
        .run(sys.executable, "-c", fetch, "http://100.64.0.1:5001/api/v1/rates")
        .stdout
    )
    assert rates["registration_grant"] == 150


def test_each_role_installs_its_extra_only(site: Site) -> None:
    probe = (
        "import importlib.util, sys; "
        "print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    )
    modules = ["flask", "redis", "docker", "hivemind_cluster"]
    for host, venv, expected in [
        (site.hub, "venv-hub", "flask redis hivemind_cluster"),
        (site.agents[0], "venv-a1", "docker hivemind_cluster"),
        (site.agents[1], "venv-a2", "docker hivemind_cluster"),
    ]:
        python = str(site.work / venv / "bin" / "python")
        assert host.run(python, "-I", "-c", probe, *modules).stdout.split() == expected.split(), (
            venv
        )
    # Each host installed from its own copy of the wheelhouse, HiveMind's own version.
    manifest = json.loads((build_wheelhouse() / "wheelhouse.json").read_text())
    for name in ["hub", "a1", "a2"]:
        copied = json.loads((site.work / f"wheels-{name}" / "wheelhouse.json").read_text())
        assert copied == manifest
    hub_python = str(site.work / "venv-hub" / "bin" / "python")
    version = site.hub.run(
        hub_python, "-c", "import importlib.metadata as m; print(m.version('hivemind-cluster'))"
    ).stdout.strip()
    assert version == manifest["hivemind"]


def test_unit_files_run_the_commands_that_were_started(site: Site) -> None:
    units = sorted((site.work / "systemd").glob("*.service"))
    assert len(units) == 3
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(unit)
        exec_start = parser["Service"]["ExecStart"]
        restart = parser["Service"]["Restart"]
        assert restart == ("on-failure" if "hivemind-hub" in exec_start else "always")
        assert parser["Install"]["WantedBy"] == "multi-user.target"
        assert running_commands().count(exec_start) == 1, f"{unit.name}: {exec_start}"


def test_second_run_changes_nothing(site: Site) -> None:
    second = site.playbook()
    assert second.returncode == 0, second.stdout[-4000:]
    hosts = recap(second.stdout)
    assert sorted(hosts) == ["a1", "a2", "hub"]
    assert {host: r["changed"] for host, r in hosts.items()} == {"a1": 0, "a2": 0, "hub": 0}


def test_agents_are_not_enrolled_twice(site: Site) -> None:
    nodes = json.loads(site.hub_cli("nodes", "--all", "--json"))
    assert len([n for n in nodes if n["role"] == "worker"]) == 2
    tokens = json.loads(site.hub_cli("token", "list", "--json"))
    assert len(tokens) == 2 and all(t["state"] == "used" for t in tokens)
