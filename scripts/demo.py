"""`make demo`: a hub, two workers and a laptop in network namespaces over a real WireGuard
overlay.

Creates the hub, joins both workers and an operator "laptop" with one-time tokens, prints
the hub's node list, proves every member reaches every other over the overlay, then — as
user alice of the web UI, from the laptop, with the `hivemind` CLI over the JSON API —
runs real tasks in Docker on the workers (a Python bundle with output files, and shell
tasks spread by capacity), pays for them in CPT and reads the mesh status; reads the hub's
Prometheus metrics from the laptop and checks the audit log's chain. Tears everything down
and prints a summary. Exits non-zero if any step fails. Needs root.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.lab import CliUser, Host, Lab, Mesh

HUB_METRICS = "http://100.64.0.1:9464/metrics"
HUB_API = "http://100.64.0.1:5001"


def step(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        print("error: the demo creates network namespaces and WireGuard interfaces: run as root")
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hivemind-demo-") as tmp, Lab(Path(tmp)) as lab:
        step("creating hosts: hub, worker-a, worker-b, laptop (namespaces on 198.51.100.0/24)")
        hub, a, b, laptop = (lab.add_host(n) for n in ("hub", "worker-a", "worker-b", "laptop"))
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
        step("hivemind-agent join --role operator token on laptop (a user's machine)")
        mesh.join(laptop, mesh.token(role="operator"))
        step("hivemind-hub nodes")
        print(mesh.hub_cli("nodes").stdout, end="")
        step("overlay reachability (ping over WireGuard; spokes are routed through the hub)")
        addresses = {"hub": "100.64.0.1"}
        for member in (a, b, laptop):
            addresses[member.name] = json.loads(mesh.agent(member, "status", "--json").stdout)[
                "overlay_ip"
            ]
        checks = ok = 0
        for source in (hub, a, b, laptop):
            for name, address in addresses.items():
                if name == source.name:
                    continue
                checks += 1
                reached = source.reaches(address, seconds=10)
                ok += reached
                print(
                    f"    {source.name:>8} -> {name:<8} {address:<12} "
                    f"{'ok' if reached else 'UNREACHABLE'}"
                )
        user = register_alice(laptop, Path(tmp) / "alice.json")
        wait_for_workers(mesh)
        spent_before = balance(user)
        tasks_ok, tasks_total, placement = run_tasks(user, Path(tmp))
        spent = spent_before - settled_balance(user)
        online = show_mesh(user)
        counted, audited = show_observability(mesh, laptop)
        step("stopping the hub and removing every namespace")
        mesh.stop_hub()
    print(
        f"\nsummary: 2 workers joined (fastest {min(joins.values()):.2f}s, slowest "
        f"{max(joins.values()):.2f}s), overlay reachability {ok}/{checks}, "
        f"tasks {tasks_ok}/{tasks_total} succeeded in Docker ({placement}), "
        f"alice paid {spent / 1e6:.6f} CPT through the web API, mesh page {online}, "
        f"/metrics counted {counted} succeeded, audit log {audited}, "
        f"cleaned up; {time.monotonic() - started:.1f}s in all"
    )
    observed = counted == tasks_total and audited.endswith("chain intact")
    return 0 if ok == checks and tasks_ok == tasks_total and spent > 0 and observed else 1


def wait_for_workers(mesh: Mesh) -> None:
    step("hivemind-pool nodes   (on the hub: workers registered with the pool, Docker)")
    mesh.wait_for_workers(2)
    print(mesh.pool_cli(mesh.hub, "nodes", timeout=180).stdout, end="")


def register_alice(laptop: Host, config: Path) -> CliUser:
    """alice on the laptop: the `hivemind` CLI, her API token in her own config file."""
    user = CliUser(laptop, config)
    step("hivemind register --api 100.64.0.1 --user alice   (the web UI's JSON API)")
    answer = user.run(
        "register", "--api", HUB_API, "--user", "alice", "--password-stdin", stdin="pass 1234\n"
    ).stdout
    print("    " + answer.strip().replace("\n", "\n    "))
    return user


def balance(user: CliUser) -> int:
    """In micro-CPT (exact)."""
    return int(user.json("balance")["balance_micro"])


def settled_balance(user: CliUser) -> int:
    """The balance once every task has been paid for (settlement is asynchronous)."""
    for task in user.json("list"):
        user.settled(task["id"], timeout=15)
    step("hivemind balance   and   hivemind history")
    print("    " + user.run("balance").stdout.strip())
    history = user.run("history", "--limit", "4").stdout
    print("    " + history.strip().replace("\n", "\n    "))
    return balance(user)


def run_tasks(user: CliUser, tmp: Path) -> tuple[int, int, str]:
    """Submit tasks from the laptop over the overlay; they run in Docker on the workers."""
    bundle = tmp / "estimate-pi"
    bundle.mkdir()
    (bundle / "main.py").write_text(PI_TASK)
    step("hivemind submit --bundle estimate-pi/   (main.py runs in hivemind/python:3.11)")
    ids = [user.json("submit", "--bundle", str(bundle))["id"]]
    step("hivemind submit --cpu 1 --memory 64M -- sh -c '…'   (x4, spread by free capacity)")
    for n in range(4):
        script = f"echo task {n} on $(hostname); sleep 1; echo done > /out/result-{n}.txt"
        ids.append(
            user.json(
                "submit",
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
            )["id"]
        )
    done = [user.json("wait", task_id) for task_id in ids]
    for task in done:
        print(
            f"    {task['id']}  {task['status']:<9} on {task['node']:<8} "
            f"attempt {task['attempt']}  {task['usage']['wall_seconds']:.2f}s wall  "
            f"{' '.join(task['command'])[:50]}"
        )
    step(f"hivemind logs {ids[0]}   and   hivemind result {ids[0]} -o out/")
    print("    " + user.run("logs", ids[0]).stdout.strip().replace("\n", "\n    "))
    user.run("result", ids[0], "-o", str(tmp / "out"))
    print("    out/estimate.txt: " + (tmp / "out" / "estimate.txt").read_text().strip())
    per_node: dict[str, int] = {}
    for task in done:
        per_node[task["node"]] = per_node.get(task["node"], 0) + 1
    placement = ", ".join(f"{count} on {node}" for node, count in sorted(per_node.items()))
    return sum(t["status"] == "succeeded" for t in done), len(done), placement


def show_mesh(user: CliUser) -> str:
    """What the mesh status page shows (its JSON twin, GET /api/v1/mesh)."""
    step(f"the mesh status page: {HUB_API}/mesh   (its JSON: GET /api/v1/mesh)")
    token = json.loads(user.config.read_text())["token"]
    fetch = (
        "import json, sys, urllib.request as u;"
        "r = u.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]});"
        "print(u.urlopen(r, timeout=10).read().decode())"
    )
    mesh = json.loads(
        user.host.run(sys.executable, "-c", fetch, f"{HUB_API}/api/v1/mesh", token).stdout
    )
    for node in mesh["nodes"]:
        handshake = node["handshake_age"]
        print(
            f"    {node['name']:<9} {node['role']:<8} {node['overlay_ip']:<12} "
            f"{'online ' if node['online'] else 'OFFLINE'} handshake "
            f"{'-' if handshake is None else f'{handshake:.0f}s ago':<8} "
            f"rx/tx {node['rx_bytes'] or 0}/{node['tx_bytes'] or 0} B"
        )
    totals = mesh["totals"]
    return f"{totals['workers_online']}/{totals['workers']} workers online"


def show_observability(mesh: Mesh, laptop: Host) -> tuple[int, str]:
    """The hub's /metrics as an operator's Prometheus reads it, and the audit log checked."""
    step("the hub's Prometheus metrics: http://100.64.0.1:9464/metrics (from the laptop)")
    fetch = (
        "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    text = laptop.run(sys.executable, "-c", fetch, HUB_METRICS).stdout
    wanted = ("hivemind_task_state_changes_total", "hivemind_workers", "hivemind_queue_depth")
    shown = [line for line in text.splitlines() if line.startswith(wanted)]
    print("    " + "\n    ".join(shown))
    succeeded = 'hivemind_task_state_changes_total{state="succeeded"}'
    counted = sum(int(float(line.split()[-1])) for line in shown if line.startswith(succeeded))
    step("hivemind-hub audit --verify   (who did what: hivemind-hub audit)")
    audited = mesh.hub_cli("audit", "--verify").stdout.strip()
    print(f"    {audited}")
    return counted, audited


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
