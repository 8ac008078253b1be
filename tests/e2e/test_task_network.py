"""End to end, as root: a task with network gets the outside world only.

Hosts: ``hub`` (``allow_task_network = true``); worker ``w1`` running the real agent service
with a Docker daemon of its own (tests/support/netnsdocker.py), so its containers' traffic
really leaves through w1, its WireGuard interface and its nftables; operator ``op``, whose
"laptop" serves on its overlay address; ``internet``, a host on the underlay serving HTTP.
The task probes with real connections from inside its container (busybox ``nc``, 3 s
connect timeouts; the image's static ``wget`` crashes): the internet host answers; the hub's
Redis, pool and web on the overlay, the operator's overlay address, the hub's enrollment
port on the underlay and the worker's own addresses (overlay, underlay, the bridge's
gateway) do not. A table removed behind the agent's back is put back before the next task
with network; the agent removes its table when it stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hivemind_cluster.agent.taskdisk import unmount_leftovers
from hivemind_cluster.agent.tasknet import table_name
from tests.support.lab import Host, Lab
from tests.support.netnsdocker import NamespaceDocker, namespace_docker
from tests.support.poolworld import PoolWorld
from tests.support.prerequisites import require, require_root_network

pytestmark = pytest.mark.privileged

BUSYBOX = "hivemind/busybox:latest"
INTERNET_PORT = 8080
LAPTOP_PORT = 8000
WORKER_SERVICE_PORT = 8081  # a service of the worker's own, on all its addresses
GREETING = "hello from the internet"

PROBE = """
reach() {
  if nc -w 3 "$2" "$3" -e true 2>/dev/null; then echo "$1 reached"; else echo "$1 blocked"; fi
}
request='GET /hello.txt HTTP/1.0\\r\\n\\r\\n'
echo "internet says $(printf "$request" | nc -w 5 INTERNET | tail -n 1)"
"""
# The worker itself reaches each of these (so "blocked" is the rules, not a closed port),
# within 20 s of starting (a server just started may not listen yet).
CONNECTS_FROM_THE_HOST = """
import socket, sys, time
deadline = time.monotonic() + 20
for address, port in zip(sys.argv[1::2], sys.argv[2::2]):
    while True:
        try:
            socket.create_connection((address, int(port)), timeout=3).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
"""


class NetworkWorld(PoolWorld):
    """The pool world's hosts (w1 the one worker), plus ``internet`` and w1's own dockerd."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self.internet: Host = lab.add_host("internet")
        self.site = lab.workdir / "site"
        self.site.mkdir()
        (self.site / "hello.txt").write_text(GREETING)
        serve(self.internet, self.internet.ip, INTERNET_PORT, str(self.site))
        serve(self.w1, "0.0.0.0", WORKER_SERVICE_PORT, str(self.site))

    def start(self, dockerd: NamespaceDocker) -> None:
        self.mesh.init_hub()
        config = self.mesh.hub_dir / "hub.toml"
        text = config.read_text()
        assert "allow_task_network = false" in text
        # An overlay policy that lets every member open anything: the worker's own guard
        # must keep a task off the overlay whatever the policy allows its host.
        open_policy = '\n[[policy.allow]]\nfrom = ["*"]\nto = ["*"]\n'
        text = text.replace("allow_task_network = false", "allow_task_network = true")
        config.write_text(text + open_policy)
        self.mesh.start_hub()
        state = self.mesh.agent_dir(self.w1)
        state.mkdir(parents=True, exist_ok=True)
        (state / "agent.toml").write_text('cpus = "1"\nmemory = "1G"\n')
        self.mesh.join(self.w1, self.mesh.token(), env=dockerd.environment())
        self.mesh.join(self.op, self.mesh.token(role="operator"))
        serve(self.op, self.agent_status(self.op)["overlay_ip"], LAPTOP_PORT, str(self.site))
        self.mesh.wait_for_workers(1, 30, agents=(self.w1,))

    def agent_status(self, host: Host) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.mesh.agent(host, "status", "--json").stdout)
        return status

    def targets(self) -> dict[str, tuple[str, int]]:
        """What a task must not reach: {name: (address, port)}, each of them listening."""
        w1, op = self.agent_status(self.w1), self.agent_status(self.op)
        # The bridge's gateway: docker0's address on w1 ("N: docker0 inet 172.17.0.1/16 …").
        docker0 = self.w1.run("ip", "-4", "-o", "address", "show", "docker0").stdout.split()
        gateway = docker0[docker0.index("inet") + 1].split("/")[0]
        return {
            "hub-redis": (w1["hub_ip"], 6379),
            "hub-pool": (w1["hub_ip"], 50051),
            "hub-web": (w1["hub_ip"], 5001),
            "operator-laptop": (op["overlay_ip"], LAPTOP_PORT),
            "hub-enrollment": (self.hub.ip, 7443),
            "worker-overlay": (w1["overlay_ip"], WORKER_SERVICE_PORT),
            "worker-underlay": (self.w1.ip, WORKER_SERVICE_PORT),
            "bridge-gateway": (gateway, WORKER_SERVICE_PORT),
        }

    def probe_script(self, targets: dict[str, tuple[str, int]]) -> str:
        """Probes in parallel, each line "NAME reached|blocked", and the internet's answer."""
        internet = f"{self.internet.ip} {INTERNET_PORT}"
        lines = [f"reach {name} {address} {port} &" for name, (address, port) in targets.items()]
        return PROBE.replace("INTERNET", internet) + "\n".join(lines) + "\nwait\n"

    def probed(self) -> tuple[str, dict[str, str | None]]:
        """What a task with network on w1 found: the internet's answer ("says …") and, for
        each of ``targets()``, "reached" or "blocked"."""
        targets = self.targets()
        endpoints = [str(part) for target in targets.values() for part in target]
        self.w1.run(sys.executable, "-c", CONNECTS_FROM_THE_HOST, *endpoints)
        script = self.probe_script(targets)
        task = self.submit_busybox("sh", "-c", script, options=("--network",))
        self.cli(self.op, "wait", task["id"], check=False)
        done = self.status(task["id"])
        logs = self.cli(self.op, "logs", task["id"]).stdout
        assert done["status"] == "succeeded", (done, logs, self.logs())
        found = dict(line.split(" ", 1) for line in logs.splitlines() if " " in line)
        return found.get("internet", ""), {name: found.get(name) for name in targets}

    def table_listed(self) -> bool:
        table = table_name(self.w1.wg_interface)
        return self.w1.run("nft", "list", "table", "inet", table, check=False).returncode == 0


def serve(host: Host, address: str, port: int, directory: str) -> None:
    host.popen(
        sys.executable, "-m", "http.server", "--bind", address, "--directory", directory, str(port)
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkWorld]:
    require_root_network()
    require(shutil.which("dockerd") is not None, "dockerd is not installed (make setup)")
    found = subprocess.run(["docker", "image", "inspect", BUSYBOX], capture_output=True)
    require(found.returncode == 0, f"image {BUSYBOX} is missing (make images)")
    workdir = tmp_path_factory.mktemp("tasknet")
    try:
        with Lab(workdir) as lab:
            world = NetworkWorld(lab)
            with namespace_docker(world.w1, workdir / "dockerd", (BUSYBOX,)) as dockerd:
                world.start(dockerd)
                yield world
    finally:
        for work in workdir.glob("*/work"):  # a killed agent's task disks
            unmount_leftovers(work)


def test_a_task_with_network_reaches_the_internet_and_nothing_of_the_cluster(
    world: NetworkWorld,
) -> None:
    internet, verdicts = world.probed()
    assert internet == f"says {GREETING}"
    assert verdicts == dict.fromkeys(verdicts, "blocked")
    assert world.table_listed()


def test_the_agent_puts_its_table_back_when_something_removed_it(world: NetworkWorld) -> None:
    world.w1.run("nft", "delete", "table", "inet", table_name(world.w1.wg_interface))
    internet, verdicts = world.probed()
    assert internet == f"says {GREETING}"
    assert verdicts == dict.fromkeys(verdicts, "blocked")
    assert world.table_listed()


def test_the_agent_removes_its_table_when_it_stops(world: NetworkWorld) -> None:
    pid = world.agent_status(world.w1)["service_pid"]
    assert pid and world.table_listed()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while world.agent_status(world.w1)["service_pid"] is not None:
        assert time.monotonic() < deadline, world.logs()
        time.sleep(0.2)
    assert not world.table_listed()
