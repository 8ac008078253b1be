"""Transfer benchmark: a 1 GiB file up to the hub and back with the ``hivemind`` CLI, vs a
plain TCP copy of the same file over the same overlay path, in one run.

    python bench/transfer.py [--runs 3] [--mib 1024] [--baseline-only] [--json]

The lab (tests/support/bigdata.py): a hub, a Docker worker and a "laptop" in network
namespaces over real WireGuard (wireguard-go, userspace: on 2 cores the tunnel itself is the
bottleneck, so both ways pay it alike). Per run, in turn:

- upload: ``hivemind submit --input FILE`` of a file never seen before (its first MiB
  rewritten), from the CLI's start until it printed the task: hashing, the resumable upload
  over the web API, the submission. The baseline sends the file (``socket.sendfile``) from
  the laptop to a receiver on the hub's overlay address writing it to a file.
- download: ``hivemind result ID --zip FILE`` of a task whose /out holds a 1 GiB random
  file (the zip is about as big), download and digest check; the baseline, the same copy
  from the hub to the laptop's overlay address.

Between runs each upload's task runs to its end (the worker fetches the input), so nothing
overlaps a measurement. Peak RSS: the hub (``up``: pool, enrollment), the web and the
agent sampled every 50 ms during all of it, the CLI exactly (``wait4``'s ``ru_maxrss``).
Dedup: the last input submitted again: the bytes the CLI reports sent, the bytes the
laptop's WireGuard interface carried, and the wall time. Prints medians and the ratios to
the baseline side by side. Goals (issue 14): throughput ≥ 0.8x the TCP copy, peak RSS
< 150 MB each, dedup: 0 bytes sent in < 1 s. Needs root, dockerd and ``make images``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.bigdata import (
    HUB_OVERLAY_IP,
    MIB,
    BigDataLab,
    big_data_lab,
    megabytes_per_second,
    overlay_ip,
    sums_task,
    tcp_copy,
    write_random_file,
)
from tests.support.measured import Finished, PeakRss, cpu_seconds

RUNS = 3
THROUGHPUT_GOAL = 0.8
RSS_GOAL = 150_000_000
DEDUP_SECONDS_GOAL = 1.0


Spent = dict[str, float]


@dataclass
class Way:
    """One direction: seconds per run of the CLI and of the TCP copy, and the CPU seconds
    each process spent on each."""

    cli_seconds: list[float] = field(default_factory=list)
    tcp_seconds: list[float] = field(default_factory=list)
    cli_peak_rss: int = 0
    cli_cpu: list[Spent] = field(default_factory=list)
    tcp_cpu: list[Spent] = field(default_factory=list)

    def summary(self, size: int) -> dict[str, Any]:
        cli = megabytes_per_second(size, statistics.median(self.cli_seconds))
        tcp = megabytes_per_second(size, statistics.median(self.tcp_seconds))
        return {
            "hivemind_mb_s": round(cli, 1),
            "tcp_mb_s": round(tcp, 1),
            "ratio": round(cli / tcp, 3),
            "cli_peak_rss_mb": round(self.cli_peak_rss / 1e6, 1),
            "hivemind_cpu_seconds": median_each(self.cli_cpu),
            "tcp_cpu_seconds": median_each(self.tcp_cpu),
        }


def median_each(runs: list[Spent]) -> Spent:
    """Each process's median; those that spent next to nothing left out."""
    names = {name for run in runs for name in run}
    medians = {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}
    return {name: round(seconds, 2) for name, seconds in sorted(medians.items()) if seconds >= 0.05}


class CpuMeter:
    """The CPU seconds the lab's services and tunnels spend between ``start`` and ``spent``."""

    def __init__(self, world: BigDataLab) -> None:
        self.finders = world.finders() | world.tunnels()
        self.before: Spent = {}

    def start(self) -> None:
        self.before = cpu_seconds(self.finders)

    def spent(self, **also: float) -> Spent:
        after = cpu_seconds(self.finders)
        return {name: after[name] - self.before.get(name, 0.0) for name in after} | also


@dataclass(frozen=True)
class Dedup:
    sent_bytes: int
    overlay_bytes: int
    seconds: float


@dataclass(frozen=True)
class Report:
    size_bytes: int
    runs: int
    upload: dict[str, Any]
    download: dict[str, Any]
    idle_rss_mb: dict[str, float]
    peak_rss_mb: dict[str, float]
    high_water_mark_mb: dict[str, float]
    dedup: Dedup | None
    goals: dict[str, float]


def checked(finished: Finished, what: str, world: BigDataLab) -> Any:
    """The command's JSON; on a failure, exits with its error and the lab's logs."""
    if finished.returncode != 0:
        shown = (finished.stderr.strip() or finished.stdout.strip())[-2000:]
        raise SystemExit(f"error: {what} failed: {shown}\n{world.logs()}")
    return json.loads(finished.stdout)


def renew(path: Path) -> None:
    """A new digest for the same file: its first MiB rewritten with new random bytes."""
    with open(path, "r+b") as data:
        data.write(os.urandom(MIB))


def wait_for_task(world: BigDataLab, task_id: str) -> dict[str, Any]:
    done: dict[str, Any] = world.user.json("wait", task_id)
    if done["status"] != "succeeded":
        raise SystemExit(f"error: task {task_id} {done['status']}: {done}\n{world.logs()}")
    return done


def upload_once(world: BigDataLab, source: Path, way: Way, meter: CpuMeter) -> str:
    """The CLI's upload of a new file; its task (fetching the input) left to finish."""
    renew(source)
    meter.start()
    submitted = world.start(*sums_task({"data.bin": source})).finish()
    way.cli_cpu.append(meter.spent(cli=submitted.cpu_seconds))
    task = checked(submitted, "hivemind submit --input", world)
    [upload] = task["uploads"]
    if upload["sent_bytes"] != source.stat().st_size:
        raise SystemExit(f"error: a new file was not sent whole: {upload}")
    way.cli_seconds.append(submitted.seconds)
    way.cli_peak_rss = max(way.cli_peak_rss, submitted.peak_rss)
    wait_for_task(world, task["id"])
    return str(task["id"])


def download_once(
    world: BigDataLab, task_id: str, scratch: Path, way: Way, meter: CpuMeter
) -> None:
    kept = scratch / "result.zip"
    meter.start()
    fetched = world.start("result", task_id, "--zip", str(kept), "--json").finish()
    way.cli_cpu.append(meter.spent(cli=fetched.cpu_seconds))
    checked(fetched, "hivemind result", world)
    way.cli_seconds.append(fetched.seconds)
    way.cli_peak_rss = max(way.cli_peak_rss, fetched.peak_rss)
    kept.unlink()


def dedup_of(world: BigDataLab, source: Path) -> Dedup:
    before = world.counters()["laptop"]
    again = world.start(*sums_task({"data.bin": source})).finish()
    task = checked(again, "hivemind submit of the same input", world)
    carried = world.counters()["laptop"] - before
    wait_for_task(world, task["id"])
    return Dedup(int(task["uploads"][0]["sent_bytes"]), carried.tx, round(again.seconds, 3))


def measure(workdir: Path, runs: int, size: int, baseline_only: bool) -> Report:
    with big_data_lab(workdir / "lab") as world:
        idle = PeakRss(world.finders())
        idle.sample()
        source, copy = workdir / "data.bin", workdir / "copy.bin"
        write_random_file(source, size)
        laptop_ip = overlay_ip(world.mesh, world.laptop)
        upload, download = Way(), Way()
        meter = CpuMeter(world)
        output_task = ""
        dedup = None
        with PeakRss(world.finders()) as sampled:
            if not baseline_only:
                made = checked(
                    world.start(*sums_task({}, size // MIB, "--wait")).finish(),
                    "the output task",
                    world,
                )
                output_task = str(made["id"])
            for _ in range(runs):
                for way, sender, receiver, address in (
                    (upload, world.laptop, world.hub, HUB_OVERLAY_IP),
                    (download, world.hub, world.laptop, laptop_ip),
                ):
                    meter.start()
                    way.tcp_seconds.append(tcp_copy(sender, receiver, address, source, copy))
                    way.tcp_cpu.append(meter.spent())
                    copy.unlink()
                if not baseline_only:
                    upload_once(world, source, upload, meter)
                    download_once(world, output_task, workdir, download, meter)
            if not baseline_only:
                dedup = dedup_of(world, source)
        world.mesh.stop_hub()
    if baseline_only:  # the CLI's columns repeat the baseline's: ratio 1
        for way in (upload, download):
            way.cli_seconds, way.cli_cpu = way.tcp_seconds, way.tcp_cpu
    return Report(
        size,
        runs,
        upload.summary(size),
        download.summary(size),
        {name: round(rss / 1e6, 1) for name, rss in idle.peaks.items()},
        {name: round(rss / 1e6, 1) for name, rss in sampled.peaks.items()},
        {name: round(rss / 1e6, 1) for name, rss in sampled.marks.items()},
        dedup,
        {
            "throughput_ratio_min": THROUGHPUT_GOAL,
            "peak_rss_mb_max": RSS_GOAL / 1e6,
            "dedup_seconds_max": DEDUP_SECONDS_GOAL,
        },
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def show(report: Report, baseline_only: bool) -> None:
    size = f"{report.size_bytes / MIB:.0f} MiB"
    print(f"{size} over the overlay (wireguard-go), median of {report.runs} runs:")
    print(f"  {'':<24}{'hivemind':>12}{'TCP copy':>12}{'ratio':>8}")
    for name, way in (
        ("upload laptop→hub", report.upload),
        ("download hub→laptop", report.download),
    ):
        shown = "-" if baseline_only else f"{way['hivemind_mb_s']:.1f} MB/s"
        ratio = (
            ""
            if baseline_only
            else f"{way['ratio']:.2f}x {verdict(way['ratio'] >= THROUGHPUT_GOAL)}"
        )
        print(f"  {name:<24}{shown:>12}{way['tcp_mb_s']:>7.1f} MB/s  {ratio}")
    for name, way in (("upload", report.upload), ("download", report.download)):
        for what, spent in (
            ("hivemind", way["hivemind_cpu_seconds"]),
            ("TCP", way["tcp_cpu_seconds"]),
        ):
            if what == "TCP" or not baseline_only:
                shown = ", ".join(f"{who} {seconds:.1f}" for who, seconds in spent.items())
                print(f"  CPU seconds, {name} by {what}: {shown}")
    idle = ", ".join(f"{name} {mb:.0f} MB" for name, mb in report.idle_rss_mb.items())
    print(f"  RSS idle: {idle}")
    peaks = dict(report.peak_rss_mb)
    if not baseline_only:
        peaks |= {
            "CLI upload": report.upload["cli_peak_rss_mb"],
            "CLI download": report.download["cli_peak_rss_mb"],
        }
    shown = ", ".join(f"{name} {mb:.0f} MB" for name, mb in peaks.items())
    print(
        f"  peak RSS during the transfers: {shown} (goal < 150 MB each: "
        f"{verdict(max(peaks.values()) < RSS_GOAL / 1e6)})"
    )
    marks = ", ".join(f"{name} {mb:.0f} MB" for name, mb in report.high_water_mark_mb.items())
    print(f"  high-water marks since start (VmHWM): {marks}")
    if report.dedup is not None:
        dedup = report.dedup
        met = dedup.sent_bytes == 0 and dedup.seconds < DEDUP_SECONDS_GOAL
        print(
            f"  dedup, the same input again: {dedup.sent_bytes} bytes sent, "
            f"{dedup.overlay_bytes / 1e3:.1f} kB over the overlay, {dedup.seconds:.2f} s "
            f"(goal 0 bytes, < 1 s: {verdict(met)})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--mib", type=int, default=1024, help="the file's size in MiB")
    parser.add_argument(
        "--baseline-only", action="store_true", help="the TCP copies and idle RSS only"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: the benchmark creates network namespaces: run as root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hivemind-bench-transfer-") as tmp:
        report = measure(Path(tmp), args.runs, args.mib * MIB, args.baseline_only)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        show(report, args.baseline_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
