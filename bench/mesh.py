"""Mesh throughput benchmark: TCP between two lab namespaces, direct and through a relay,
over plain wireguard-go and over HiveMind's mesh, on the same three hosts.

    python bench/mesh.py [--runs 5] [--mib 256] [--raw-only] [--json]

Hosts (tests/support/lab.py, one bridge): ``sender``, ``receiver`` and ``middle``. Routes:

- raw direct: plain wireguard-go (tests/support/natlab.plain_wireguard) on the three, the
  receiver a peer of the sender with its /32: the baseline.
- raw relayed: the same, the receiver's /32 taken away, so the sender's traffic follows
  the middle's /24 and the middle forwards it (ip_forward) back out of its interface: the
  relay, as the hub does it, without HiveMind.
- hivemind direct / relayed (unless ``--raw-only``): the plain interfaces removed, a real
  hub (``hivemind-hub up``) on the middle, the sender joined as an operator and the
  receiver as a worker (the default policy lets operators open connections to workers),
  timed once ``hivemind-agent status`` says the path is direct; then with the underlay UDP
  between sender and receiver dropped (nft, in the sender) once it says relayed.

Per run: one TCP connection, the sender writes ``--mib`` MiB from memory, the receiver
times from accept to EOF. Also the CPU seconds the middle spent per run (its wireguard-go,
and for HiveMind the hub's processes): near zero when the path is direct. Prints medians and
the goals of issue 15: hivemind direct ≥ 0.9x raw direct, ≥ 1.5x hivemind relayed, hub CPU
per direct run < 0.1 s. Needs root (namespaces), wireguard-go, wg, nft, redis-server.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.hostprocesses import pids_named
from tests.support.lab import UAPI_DIR, Host, Lab, Mesh
from tests.support.measured import cpu_seconds, service_pids
from tests.support.natlab import PlainWireGuard, plain_wireguard, wait_until

RUNS = 5
MIB = 1 << 20
RAW_OVERLAY = "10.77.0"
DIRECT_GOAL = 0.9  # hivemind direct / raw direct
RELAY_GOAL = 1.5  # hivemind direct / hivemind relayed
HUB_CPU_GOAL = 0.1  # CPU seconds of the hub per direct run
PATH_SECONDS = 60  # direct paths form within a few ticks; demotion takes STALE_SECONDS
BLOCK_TABLE = "bench_block"

Finders = dict[str, Callable[[], list[int]]]


@dataclass
class Route:
    """One way from sender to receiver: its figures over the runs."""

    name: str
    address: str  # the receiver's address on this route
    middle: Finders  # the processes whose CPU is "the middle's"
    members: Finders = field(default_factory=dict)  # HiveMind's agents on sender and receiver
    seconds: list[float] = field(default_factory=list)
    middle_cpu: list[float] = field(default_factory=list)
    members_cpu: list[float] = field(default_factory=list)

    def megabytes_per_second(self, size: int) -> float:
        return size / statistics.median(self.seconds) / 1e6

    def summary(self, size: int) -> dict[str, Any]:
        return {
            "mb_s": round(self.megabytes_per_second(size), 1),
            "runs_mb_s": [round(size / s / 1e6, 1) for s in self.seconds],
            "middle_cpu_s": round(statistics.median(self.middle_cpu), 3),
            "agents_cpu_s": round(statistics.median(self.members_cpu), 3),
        }


@dataclass
class Trio:
    lab: Lab
    sender: Host
    receiver: Host
    middle: Host


# --- one transfer ---------------------------------------------------------------------


def receive(address: str, ready: Path) -> None:
    """Accept one connection, read it to EOF, print the byte count and the seconds."""
    with socket.create_server((address, 0)) as server:
        ready.write_text(str(server.getsockname()[1]))
        connection, _ = server.accept()
        started, count = time.perf_counter(), 0
        with connection:
            while piece := connection.recv(MIB):
                count += len(piece)
        print(json.dumps({"bytes": count, "seconds": time.perf_counter() - started}))


def send(address: str, port: int, size: int) -> None:
    block = bytes(MIB)
    with socket.create_connection((address, port), timeout=30) as connection:
        for offset in range(0, size, MIB):
            connection.sendall(block[: min(MIB, size - offset)])


def this_script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def transfer(trio: Trio, address: str, size: int, workdir: Path) -> float:
    """Seconds for ``size`` bytes from the sender to ``address`` on the receiver."""
    ready = workdir / "receiver.port"
    ready.unlink(missing_ok=True)
    receiver = subprocess.Popen(
        trio.receiver.command(this_script("receive", address, str(ready))),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if not wait_until(lambda: ready.exists() or receiver.poll() is not None, 30, 0.02):
            raise AssertionError("the receiver did not listen")
        if not ready.exists():
            raise AssertionError(f"the receiver exited: {receiver.communicate()[1]}")
        trio.sender.run(*this_script("send", address, ready.read_text(), str(size)), timeout=600)
        out, err = receiver.communicate(timeout=60)
        answer = json.loads(out)
        if answer["bytes"] != size:
            raise AssertionError(f"the receiver got {answer['bytes']} of {size} bytes: {err}")
        return float(answer["seconds"])
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def measure(trio: Trio, route: Route, runs: int, size: int, workdir: Path) -> None:
    for _ in range(runs):
        before = cpu_seconds(route.middle), cpu_seconds(route.members)
        route.seconds.append(transfer(trio, route.address, size, workdir))
        after = cpu_seconds(route.middle), cpu_seconds(route.members)
        route.middle_cpu.append(sum(after[0].values()) - sum(before[0].values()))
        route.members_cpu.append(sum(after[1].values()) - sum(before[1].values()))


def tunnel_of(host: Host) -> Finders:
    return {f"wireguard-go {host.name}": functools.partial(pids_named, host, "wireguard-go")}


# --- plain wireguard-go ----------------------------------------------------------------


def raw_routes(trio: Trio, runs: int, size: int, workdir: Path) -> list[Route]:
    sender = plain_wireguard(trio.sender, f"{RAW_OVERLAY}.1")
    receiver = plain_wireguard(trio.receiver, f"{RAW_OVERLAY}.2")
    middle = plain_wireguard(trio.middle, f"{RAW_OVERLAY}.3")
    trio.middle.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    for member in (sender, receiver):
        middle.add_peer(member, [f"{member.address}/32"], member.underlay_endpoint)
        member.add_peer(middle, [f"{RAW_OVERLAY}.0/24"], middle.underlay_endpoint, keepalive=25)
    sender.add_peer(receiver, endpoint=receiver.underlay_endpoint, keepalive=25)
    receiver.add_peer(sender, endpoint=sender.underlay_endpoint, keepalive=25)
    direct = Route("raw direct", receiver.address, tunnel_of(trio.middle))
    relayed = Route("raw relayed", receiver.address, tunnel_of(trio.middle))
    set_direct(sender, receiver, True)
    measure(trio, direct, runs, size, workdir)
    set_direct(sender, receiver, False)
    measure(trio, relayed, runs, size, workdir)
    for plain in (sender, receiver, middle):
        remove_plain(plain)
    return [direct, relayed]


def set_direct(sender: PlainWireGuard, receiver: PlainWireGuard, direct: bool) -> None:
    """Give each end the other's /32 (direct), or take them away (through the middle)."""
    for one, other in ((sender, receiver), (receiver, sender)):
        allowed = f"{other.address}/32" if direct else ""
        one.host.run("wg", "set", one.interface, "peer", other.public_key, "allowed-ips", allowed)
    if not sender.host.reaches(receiver.address):
        raise AssertionError("the receiver is not reachable over plain WireGuard")


def remove_plain(plain: PlainWireGuard) -> None:
    """Delete the interface (wireguard-go exits) so HiveMind can take the same name."""
    plain.host.run("ip", "link", "delete", plain.interface)
    wait_until(lambda: not pids_named(plain.host, "wireguard-go"), 10)
    (UAPI_DIR / f"{plain.interface}.sock").unlink(missing_ok=True)


# --- HiveMind ------------------------------------------------------------------------


def peer_path(mesh: Mesh, host: Host, peer: Host) -> str:
    """``direct`` | ``relayed`` | "" as ``hivemind-agent status`` shows the path to ``peer``."""
    status = json.loads(mesh.agent(host, "status", "--json").stdout)
    return next((str(p["path"]) for p in status.get("peers", []) if p["name"] == peer.name), "")


def wait_for_path(mesh: Mesh, trio: Trio, path: str) -> None:
    ends = ((trio.sender, trio.receiver), (trio.receiver, trio.sender))
    if not wait_until(
        lambda: all(peer_path(mesh, a, b) == path for a, b in ends), PATH_SECONDS, 0.5
    ):
        raise AssertionError(f"the path did not become {path}:\n{mesh.logs(*ends[0])}")


def block_direct(trio: Trio) -> None:
    """Drop the underlay UDP between sender and receiver (in the sender's namespace)."""
    peer = trio.receiver.ip
    trio.sender.run(
        "nft",
        "-f",
        "-",
        input=f"""table inet {BLOCK_TABLE} {{
    chain output {{ type filter hook output priority 0; ip daddr {peer} meta l4proto udp drop; }}
    chain input {{ type filter hook input priority 0; ip saddr {peer} meta l4proto udp drop; }}
}}""",
    )


def hivemind_routes(trio: Trio, runs: int, size: int, workdir: Path) -> list[Route]:
    mesh = Mesh(trio.lab, trio.middle)
    mesh.start_hub()
    try:
        mesh.join(trio.sender, mesh.token(role="operator"))
        mesh.join(trio.receiver, mesh.token(role="worker"))
        address = json.loads(mesh.agent(trio.receiver, "status", "--json").stdout)["overlay_ip"]
        middle = {"hub": service_pids(trio.middle, "hivemind-hub up"), **tunnel_of(trio.middle)}
        agents = {
            host.name: service_pids(host, "hivemind_cluster.agent.cli run")
            for host in (trio.sender, trio.receiver)
        }
        direct = Route("hivemind direct", address, middle, agents)
        relayed = Route("hivemind relayed", address, middle, agents)
        wait_for_path(mesh, trio, "direct")
        measure(trio, direct, runs, size, workdir)
        block_direct(trio)
        wait_for_path(mesh, trio, "relayed")
        measure(trio, relayed, runs, size, workdir)
        return [direct, relayed]
    finally:
        mesh.stop_hub()


# --- the report ----------------------------------------------------------------------


def verdicts(routes: dict[str, Route], size: int) -> dict[str, Any]:
    speed = {name: route.megabytes_per_second(size) for name, route in routes.items()}
    found: dict[str, Any] = {
        "raw_relayed_vs_direct": round(speed["raw relayed"] / speed["raw direct"], 3)
    }
    if "hivemind direct" in routes:
        hub_cpu = statistics.median(routes["hivemind direct"].middle_cpu)
        found |= {
            "direct_vs_raw": round(speed["hivemind direct"] / speed["raw direct"], 3),
            "direct_vs_relayed": round(speed["hivemind direct"] / speed["hivemind relayed"], 3),
            "hub_cpu_s_per_direct_run": round(hub_cpu, 3),
        }
        found["met"] = {
            "direct >= 0.9x raw": found["direct_vs_raw"] >= DIRECT_GOAL,
            "direct >= 1.5x relayed": found["direct_vs_relayed"] >= RELAY_GOAL,
            "hub CPU near zero during direct": hub_cpu < HUB_CPU_GOAL,
        }
    return found


def show(report: dict[str, Any]) -> None:
    print(f"TCP throughput, {report['mib']} MiB per run, median of {report['runs']} runs")
    print(
        f"{'route':<18} {'MB/s':>8}  {'middle CPU-s/run':>16}  {'agents CPU-s/run':>16}"
        "  runs (MB/s)"
    )
    for name, figures in report["routes"].items():
        print(
            f"{name:<18} {figures['mb_s']:>8}  {figures['middle_cpu_s']:>16}  "
            f"{figures['agents_cpu_s']:>16}  {figures['runs_mb_s']}"
        )
    for name, value in report["verdicts"].items():
        if name != "met":
            print(f"{name}: {value}")
    for goal, met in report["verdicts"].get("met", {}).items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "receive":
        receive(argv[1], Path(argv[2]))
        return 0
    if argv and argv[0] == "send":
        send(argv[1], int(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--raw-only", action="store_true", help="plain wireguard-go only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    size = args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as scratch, Lab(Path(scratch)) as lab:
        workdir = Path(scratch)
        trio = Trio(lab, *(lab.add_host(n) for n in ("sender", "receiver", "middle")))
        routes = raw_routes(trio, args.runs, size, workdir)
        if not args.raw_only:
            routes += hivemind_routes(trio, args.runs, size, workdir)
    by_name = {route.name: route for route in routes}
    report = {
        "mib": args.mib,
        "runs": args.runs,
        "routes": {name: route.summary(size) for name, route in by_name.items()},
        "verdicts": verdicts(by_name, size),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
    met = report["verdicts"].get("met", {})
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
