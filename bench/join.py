"""Join benchmark: wall time of `hivemind-agent join` from process start until the hub
answers over the overlay, on userspace WireGuard in network namespaces.

    python bench/join.py [--single 5] [--concurrent 20] [--rounds 3]

Prints the median of the single joins (goal: under 1 s) and, per round, the time for N
agents to join at once. Figures vary with the machine's load: compare medians, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.lab import Host, Lab, Mesh, tool


def timed_join(mesh: Mesh, host: Host, token: str) -> float:
    began = time.monotonic()
    mesh.join(host, token)
    return time.monotonic() - began


def concurrent_round(workdir: Path, count: int) -> tuple[float, list[float]]:
    with Lab(workdir) as lab:
        mesh = Mesh(lab, lab.add_host("hub"))
        mesh.start_hub()
        hosts = [lab.add_host(f"c{i}") for i in range(count)]
        token = mesh.token(uses=count)
        began = time.monotonic()
        processes = [
            subprocess.Popen(
                host.command(
                    [
                        tool("hivemind-agent"),
                        "join",
                        token,
                        "--state-dir",
                        str(mesh.agent_dir(host)),
                        "--interface",
                        host.wg_interface,
                        "--name",
                        host.name,
                        "--json",
                    ]
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for host in hosts
        ]
        each = []
        for process in processes:
            out, err = process.communicate(timeout=300)
            if process.returncode != 0:
                raise SystemExit(f"concurrent join failed: {err.strip()}")
            each.append(json.loads(out)["seconds"])
        total = time.monotonic() - began
        online = sum(1 for n in mesh.nodes() if n["role"] == "worker")
        if online != count:
            raise SystemExit(f"only {online} of {count} nodes listed")
        mesh.stop_hub()
    return total, each


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: the benchmark creates network namespaces: run as root")
        return 1
    with tempfile.TemporaryDirectory(prefix="hivemind-bench-") as tmp:
        with Lab(Path(tmp) / "single") as lab:
            mesh = Mesh(lab, lab.add_host("hub"))
            mesh.start_hub()
            singles = [
                timed_join(mesh, lab.add_host(f"s{i}"), mesh.token()) for i in range(args.single)
            ]
            mesh.stop_hub()
        rounds = [
            concurrent_round(Path(tmp) / f"round{r}", args.concurrent) for r in range(args.rounds)
        ]
    median = statistics.median(singles)
    print(
        f"join, one at a time: median {median:.3f} s over {len(singles)} joins "
        f"(min {min(singles):.3f}, max {max(singles):.3f}); goal < 1 s: "
        f"{'met' if median < 1 else 'NOT met'} ({median / 1.0:.2f}x of the goal)"
    )
    totals = [total for total, _ in rounds]
    per_join = statistics.median([s for _, each in rounds for s in each])
    print(
        f"join, {args.concurrent} at once: median {statistics.median(totals):.3f} s until "
        f"all {args.concurrent} reachable over {len(rounds)} rounds "
        f"({', '.join(f'{t:.2f}' for t in totals)}); median per agent {per_join:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
