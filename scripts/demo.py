"""`make demo`: a hub and two workers in network namespaces over a real WireGuard overlay.

Creates the hub, joins both workers with one-time tokens, prints the hub's node list,
proves every member reaches every other over the overlay, runs real tasks in Docker on
the workers through the pool (a Python bundle with output files, and shell tasks spread
by capacity), tears everything down and prints a summary. Exits non-zero if any step
fails. Needs root (run `make demo`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import Host, Lab, Mesh, tool


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
        tasks_ok, tasks_total, placement = run_tasks(mesh, hub, Path(tmp))
        step("stopping the hub and removing every namespace")
        mesh.stop_hub()
    print(
        f"\nsummary: 2 workers joined (fastest {min(joins.values()):.2f}s, slowest "
        f"{max(joins.values()):.2f}s), overlay reachability {ok}/{checks}, "
        f"tasks {tasks_ok}/{tasks_total} succeeded in Docker ({placement}), "
        f"cleaned up; {time.monotonic() - started:.1f}s in all"
    )
    return 0 if ok == checks and tasks_ok == tasks_total else 1


def hivemind(mesh: Mesh, host: Host, *args: str) -> str:
    command, *rest = args
    return host.run(
        tool("hivemind-pool"), command, "--identity", str(mesh.hub_dir), *rest, timeout=180
    ).stdout


def run_tasks(mesh: Mesh, hub: Host, tmp: Path) -> tuple[int, int, str]:
    """Submit tasks from the hub over the overlay; they run in Docker on the workers."""
    step("hivemind nodes (workers registered with the pool: capacity, Docker)")
    deadline = time.monotonic() + 30
    while sum(n["connected"] for n in json.loads(hivemind(mesh, hub, "nodes", "--json"))) < 2:
        if time.monotonic() > deadline:
            raise SystemExit("workers did not connect to the pool")
        time.sleep(0.3)
    print(hivemind(mesh, hub, "nodes"), end="")
    bundle = tmp / "estimate-pi"
    bundle.mkdir()
    (bundle / "main.py").write_text(PI_TASK)
    step("hivemind submit --bundle estimate-pi/ --wait   (main.py runs in hivemind/python:3.11)")
    ids = [json.loads(hivemind(mesh, hub, "submit", "--json", "--bundle", str(bundle)))["id"]]
    step("hivemind submit --cpu 1 --memory 64M -- sh -c '…'   (x4, spread by free capacity)")
    for n in range(4):
        script = f"echo task {n} on $(hostname); sleep 1; echo done > /out/result-{n}.txt"
        ids.append(
            json.loads(
                hivemind(
                    mesh,
                    hub,
                    "submit",
                    "--json",
                    "--image",
                    "hivemind/busybox:latest",
                    "--cpu",
                    "1",
                    "--memory",
                    "64M",
                    "--",
                    "sh",
                    "-c",
                    script,
                )
            )["id"]
        )
    done = [json.loads(hivemind(mesh, hub, "wait", "--json", task_id)) for task_id in ids]
    for task in done:
        print(
            f"    {task['id']}  {task['status']:<9} on {task['node']:<8} "
            f"attempt {task['attempt']}  {task['usage']['wall_seconds']:.2f}s wall  "
            f"{' '.join(task['command'])[:50]}"
        )
    step(f"hivemind logs {ids[0]}   and   hivemind result {ids[0]} -o out/")
    print("    " + hivemind(mesh, hub, "logs", ids[0]).strip().replace("\n", "\n    "))
    hivemind(mesh, hub, "result", ids[0], "-o", str(tmp / "out"))
    print("    out/estimate.txt: " + (tmp / "out" / "estimate.txt").read_text().strip())
    per_node: dict[str, int] = {}
    for task in done:
        per_node[task["node"]] = per_node.get(task["node"], 0) + 1
    placement = ", ".join(f"{count} on {node}" for node, count in sorted(per_node.items()))
    return sum(t["status"] == "succeeded" for t in done), len(done), placement


PI_TASK = """\
import random
random.seed(7)
inside = sum(random.random() ** 2 + random.random() ** 2 <= 1 for _ in range(300_000))
estimate = 4 * inside / 300_000
print(f"pi is about {estimate:.4f} (300000 samples)")
open("/out/estimate.txt", "w").write(f"{estimate:.6f}\\n")
"""


if __name__ == "__main__":
    raise SystemExit(main())
