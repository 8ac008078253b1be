"""`make demo`: a hub and two workers in network namespaces over a real WireGuard overlay.

Creates the hub, joins both workers with one-time tokens, prints the hub's node list,
proves every member reaches every other over the overlay, tears everything down and
prints a summary. Exits non-zero if any step fails. Needs root (run `make demo`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import Lab, Mesh


def step(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        print("error: the demo creates network namespaces and WireGuard interfaces: run as root")
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hivemind-demo-") as tmp, Lab(Path(tmp)) as lab:
        step("creating hosts: hub, worker-a, worker-b (namespaces on a 198.51.100.0/24 bridge)")
        hub, a, b = (lab.add_host(n) for n in ("hub", "worker-a", "worker-b"))
        mesh = Mesh(lab, hub)
        step(f"hivemind-hub init --endpoint {hub.ip}:7443 && hivemind-hub up")
        mesh.start_hub()
        joins = {}
        for worker in (a, b):
            token = mesh.token()
            step(f"hivemind-agent join {token[:24]}… on {worker.name}")
            began = time.monotonic()
            result = json.loads(mesh.join(worker, token, True, "--json").stdout)
            joins[worker.name] = time.monotonic() - began
            print(
                f"    {worker.name}: node {result['node_id']} at {result['overlay_ip']} "
                f"({result['backend']} WireGuard) in {joins[worker.name]:.2f}s"
            )
        step("hivemind-hub nodes")
        print(mesh.hub_cli("nodes").stdout, end="")
        step("overlay reachability (ping over WireGuard; spokes are routed through the hub)")
        addresses = {"hub": "100.64.0.1"}
        for worker in (a, b):
            addresses[worker.name] = json.loads(mesh.agent(worker, "status", "--json").stdout)[
                "overlay_ip"
            ]
        checks = ok = 0
        for source in (hub, a, b):
            for name, address in addresses.items():
                if name == source.name:
                    continue
                checks += 1
                reached = source.can_ping(address, timeout=3)
                ok += reached
                print(
                    f"    {source.name:>8} -> {name:<8} {address:<12} "
                    f"{'ok' if reached else 'UNREACHABLE'}"
                )
        step("stopping the hub and removing every namespace")
        mesh.stop_hub()
    print(
        f"\nsummary: 2 workers joined (fastest {min(joins.values()):.2f}s, slowest "
        f"{max(joins.values()):.2f}s), overlay reachability {ok}/{checks}, "
        f"cleaned up; {time.monotonic() - started:.1f}s in all"
    )
    return 0 if ok == checks else 1


if __name__ == "__main__":
    raise SystemExit(main())
