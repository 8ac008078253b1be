"""Big data over a lab mesh (tests/e2e/test_big_data.py, bench/transfer.py): the lab (a hub,
a Docker worker, a laptop), random files, a task that hashes its inputs and writes a big
output, and the plain TCP copy over the overlay that transfers are measured against
(tests/support/measured.py measures the processes and interfaces).

The TCP copy's two ends run in the hosts' namespaces as
``python -m tests.support.bigdata receive|send …`` (``tcp_copy`` starts them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hivemind_cluster.agent.taskdisk import unmount_leftovers
from tests.support.hostprocesses import pids_named
from tests.support.lab import CliUser, Host, Lab, Mesh, tool
from tests.support.measured import Counters, Running, interface_counters, run_measured, service_pids
from tests.support.poolworld import remove_containers

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
GIB = 1 << 30
HUB_OVERLAY_IP = "100.64.0.1"
HUB_API = f"http://{HUB_OVERLAY_IP}:5001"
# What the processes of a lab hub and worker are, by their command lines.
HUB_UP = "hivemind-hub up"
HUB_WEB = "hivemind_cluster.hub.cli web"
AGENT_SERVICE = "hivemind_cluster.agent.cli run"


def write_random_file(path: Path, size: int) -> str:
    """A file of ``size`` random bytes (incompressible, unlike zeros); its SHA-256 in hex."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for offset in range(0, size, MIB):
            piece = os.urandom(min(MIB, size - offset))
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while piece := source.read(MIB):
            digest.update(piece)
    return digest.hexdigest()


def file_size(path: Path) -> int:
    """The size of ``path``, 0 while it does not exist (a partial file comes and goes)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def largest_file(directory: Path, pattern: str = "*") -> tuple[Path | None, int]:
    """The biggest file under ``directory`` matching ``pattern`` (recursively) and its size."""
    best: tuple[Path | None, int] = (None, 0)
    if directory.is_dir():
        for path in directory.rglob(pattern):
            size = file_size(path)
            if path.is_file() and size > best[1]:
                best = (path, size)
    return best


def wait_for(check: Callable[[], bool], what: str, seconds: float, logs: Callable[[], str]) -> None:
    """Poll ``check`` until true; an AssertionError naming ``what`` (with ``logs``) after
    ``seconds``. A deadline, not a timed assertion: it only bounds a hang."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f}s\n{logs()}")
        time.sleep(0.05)


# --- the overlay ---------------------------------------------------------------------------


def overlay_ip(mesh: Mesh, host: Host) -> str:
    if host is mesh.hub:
        return HUB_OVERLAY_IP
    return str(json.loads(mesh.agent(host, "status", "--json").stdout)["overlay_ip"])


# --- the lab ---------------------------------------------------------------------------


@dataclass
class BigDataLab:
    """A hub, one Docker worker and a "laptop" (an operator node, so on the overlay) whose
    user alice runs the ``hivemind`` CLI against the hub's web API over WireGuard."""

    lab: Lab
    mesh: Mesh
    hub: Host
    worker: Host
    laptop: Host
    user: CliUser

    def logs(self) -> str:
        web_log = self.mesh.hub_dir / "web.log"
        web = web_log.read_text()[-3000:] if web_log.exists() else ""
        return f"{self.mesh.logs(self.worker)}\n--- web\n{web}"

    def agent_pid(self) -> int:
        return int(
            json.loads(self.mesh.agent(self.worker, "status", "--json").stdout)["service_pid"]
        )

    def finders(self) -> dict[str, Callable[[], list[int]]]:
        """The measured processes: the hub (``up``: pool, enrollment), the web, the agent."""
        return {
            "hub": service_pids(self.hub, HUB_UP),
            "web": service_pids(self.hub, HUB_WEB),
            "agent": service_pids(self.worker, AGENT_SERVICE),
        }

    def tunnels(self) -> dict[str, Callable[[], list[int]]]:
        """Each host's userspace WireGuard (its CPU is the overlay's cost)."""
        return {
            f"wireguard-go {host.name}": functools.partial(pids_named, host, "wireguard-go")
            for host in (self.hub, self.worker, self.laptop)
        }

    def hivemind(self, *args: str) -> list[str]:
        """The ``hivemind`` command line of alice on the laptop (run it with ``self.user.env``)."""
        return [tool("hivemind"), *args]

    def start(self, *args: str) -> Running:
        """``hivemind ARGS…`` started on the laptop (to measure it, or to kill it)."""
        return Running(self.laptop, self.hivemind(*args), self.user.env)

    def counters(self) -> dict[str, Counters]:
        return {host.name: interface_counters(host) for host in (self.laptop, self.worker)}


# A task hashing each of its inputs and writing OUTPUT_MIB MiB of random bytes to
# /out/big.bin; it prints {"inputs": {name: sha256 hex}, "output": hex} and writes it to
# /out/sums.json too.
SUMS_SCRIPT = """\
import hashlib, json, os
def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while piece := data.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()
inputs = "/work/inputs"
names = sorted(os.listdir(inputs)) if os.path.isdir(inputs) else []
sums = {"inputs": {n: sha256(os.path.join(inputs, n)) for n in names}}
output = hashlib.sha256()
if int(os.environ["OUTPUT_MIB"]):
    with open("/out/big.bin", "wb") as out:
        for _ in range(int(os.environ["OUTPUT_MIB"])):
            piece = os.urandom(1 << 20)
            output.update(piece)
            out.write(piece)
sums["output"] = output.hexdigest()
with open("/out/sums.json", "w") as out:
    json.dump(sums, out)
print(json.dumps(sums))
"""


def sums_task(inputs: dict[str, Path], output_mib: int = 0, *options: str) -> list[str]:
    """``hivemind submit`` arguments of the SUMS_SCRIPT task on ``inputs`` (name → path)."""
    disk = f"{output_mib // 1024 + 1}G"
    named = [arg for name, path in inputs.items() for arg in ("--input", f"{name}={path}")]
    return [
        "submit",
        *named,
        "--image",
        "hivemind/python:3.11",
        "--cpu",
        "1",
        "--memory",
        "256M",
        "--disk",
        disk,
        "--timeout",
        "900",
        "--env",
        f"OUTPUT_MIB={output_mib}",
        "--json",
        *options,
        "--",
        "python",
        "-c",
        SUMS_SCRIPT,
    ]


@contextlib.contextmanager
def big_data_lab(workdir: Path, worker_memory: str = "2G") -> Iterator[BigDataLab]:
    """The lab, up, with the worker connected; everything removed afterwards, whatever
    happened (namespaces, processes, the worker's containers and task disks)."""
    lab = Lab(workdir)
    node_id = ""
    try:
        hub, worker, laptop = (lab.add_host(name) for name in ("hub", "worker", "laptop"))
        mesh = Mesh(lab, hub)
        mesh.start_hub()
        state = mesh.agent_dir(worker)
        state.mkdir(parents=True)
        (state / "agent.toml").write_text(f'cpus = "2"\nmemory = "{worker_memory}"\n')
        mesh.join(worker, mesh.token())
        node_id = str(json.loads(mesh.agent(worker, "status", "--json").stdout)["node_id"])
        mesh.join(laptop, mesh.token(role="operator"))
        user = CliUser(laptop, workdir / "alice.json")
        login = ("--api", HUB_API, "--user", "alice", "--password-stdin")
        user.run("register", *login, stdin="big data 1234\n")
        mesh.wait_for_workers(1, timeout=60, agents=(worker,))
        yield BigDataLab(lab, mesh, hub, worker, laptop, user)
    finally:
        lab.close()
        if node_id:
            remove_containers(node_id)
        for work in workdir.glob("*/work"):  # a killed agent's task disks, as its restart would
            unmount_leftovers(work)


# --- the plain TCP copy --------------------------------------------------------------------


def module_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.bigdata", *args]


def module_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def tcp_copy(sender: Host, receiver: Host, address: str, source: Path, dest: Path) -> float:
    """Seconds to copy ``source`` from ``sender`` to ``dest`` on ``receiver`` over one TCP
    connection to ``address`` (the receiver's overlay address), from the connect until the
    receiver has written the last byte (to the page cache, as uploads and downloads do)."""
    ready = dest.with_name(dest.name + ".port")
    ready.unlink(missing_ok=True)
    process = subprocess.Popen(
        receiver.command(module_command("receive", address, str(dest), str(ready))),
        env=module_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: ready.exists() or process.poll() is not None,
            "the TCP receiver listening",
            30,
            lambda: "",
        )
        if not ready.exists():
            raise AssertionError(f"the TCP receiver exited: {process.communicate()[1]}")
        port = ready.read_text().strip()
        sent = run_measured(
            sender, module_command("send", address, port, str(source)), module_env()
        )
        answer = sent.json()
        if answer["bytes"] != file_size(source) or file_size(dest) != answer["bytes"]:
            raise AssertionError(f"the TCP copy is short: {answer}")
        return float(answer["seconds"])
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait()
        ready.unlink(missing_ok=True)


def receive(address: str, dest: Path, ready: Path) -> None:
    """Accept one connection, write what arrives to ``dest``, answer the byte count."""
    with socket.create_server((address, 0)) as server:
        written = ready.with_name(ready.name + ".tmp")
        written.write_text(str(server.getsockname()[1]))
        written.rename(ready)  # whole: the starter reads it the moment it exists
        connection, _ = server.accept()
        with connection, open(dest, "wb") as out:
            buffer = bytearray(MIB)
            view = memoryview(buffer)
            total = 0
            while count := connection.recv_into(buffer):
                out.write(view[:count])
                total += count
            out.flush()
            connection.sendall(f"{total}\n".encode())


def send(address: str, port: int, source: Path) -> dict[str, float]:
    started = time.perf_counter()
    with socket.create_connection((address, port)) as connection, open(source, "rb") as data:
        sent = connection.sendfile(data)
        connection.shutdown(socket.SHUT_WR)
        answer = connection.makefile().readline()
    seconds = time.perf_counter() - started
    return {"bytes": int(answer), "sent": sent, "seconds": seconds}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="one end of a plain TCP copy")
    commands = parser.add_subparsers(dest="command", required=True)
    receiving = commands.add_parser("receive")
    receiving.add_argument("address")
    receiving.add_argument("dest", type=Path)
    receiving.add_argument("ready", type=Path)
    sending = commands.add_parser("send")
    sending.add_argument("address")
    sending.add_argument("port", type=int)
    sending.add_argument("source", type=Path)
    args = parser.parse_args(argv)
    if args.command == "receive":
        receive(args.address, args.dest, args.ready)
    else:
        print(json.dumps(send(args.address, args.port, args.source)))
    return 0


def megabytes_per_second(size: int, seconds: float) -> float:
    return size / seconds / 1e6 if seconds > 0 else float("inf")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
