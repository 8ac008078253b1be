"""End to end, as root: data of any size over the overlay (issue 14).

Hosts (tests/support/bigdata.py): ``hub``, one Docker ``worker``, and a ``laptop`` whose
user alice runs the ``hivemind`` CLI against the hub's web API over WireGuard. A 1 GiB
random input goes up, the worker fetches it into its input cache, a task hashes it and
writes a 1 GiB random output, and ``hivemind result`` brings that back; then the same input
again (nothing may travel), then a CLI killed mid-upload and an agent killed mid-fetch, each
run again (each must go on from where it stopped, not from 0).

Bytes are counted twice: by the CLI (``--json``: ``uploads[].sent_bytes``) and by the
WireGuard interfaces of the laptop and the worker (what the overlay really carried). The
tests share one lab and run in file order; at the end, whatever happened, every file is
removed but the logs (kept under the module's pytest tmp dir, ``bigdata*/logs``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bigdata import (
    GIB,
    MIB,
    BigDataLab,
    big_data_lab,
    file_size,
    largest_file,
    sha256_of,
    sums_task,
    wait_for,
    write_random_file,
)
from tests.support.measured import PeakRss, Sampled, interface_counters, settled_size
from tests.support.poolworld import IMAGES
from tests.support.prerequisites import require_docker_images, require_root_network

pytestmark = pytest.mark.privileged
SIZE = GIB
# The inputs of the kill-and-resume test: big enough to be caught mid-transfer over
# wireguard-go (tens of MB/s here), smaller than SIZE to keep the file's runtime down.
RESUME_SIZE = 256 * MIB
# Control traffic (the submission, heartbeats, the task's log) is kilobytes; data is MiBs.
CONTROL_BYTES = 2 * MIB
# The overlay carries each byte with TCP/IP headers, and retransmissions on a loaded
# machine: 4-20% more here. The resume tests kill a transfer past half its size, so that the
# rest with that overhead stays under ``size - done / 2`` and the whole file does not.

# Not the benchmark's 150 MB goal (bench/transfer.py measures that): a bound that a process
# holding the data, or a good part of it, in memory cannot meet.
BOUNDED_RSS = 256 * MIB


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the lab and every big file live; removed at the end (pytest keeps tmp dirs)."""
    root = tmp_path_factory.mktemp("bigdata")
    try:
        yield root
    finally:
        keep_logs_only(root)


def keep_logs_only(root: Path) -> None:
    """Everything under ``root`` removed but its logs, moved to ``root/logs``."""
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    for log in root.rglob("*.log"):
        if logs not in log.parents:
            shutil.move(log, logs / "-".join(log.relative_to(root).parts))
    for entry in root.iterdir():
        if entry.is_dir() and entry != logs:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file():
            entry.unlink()


@pytest.fixture(scope="module")
def world(scratch: Path) -> Iterator[BigDataLab]:
    require_root_network()
    require_docker_images(*IMAGES).close()
    with big_data_lab(scratch / "lab") as found:
        yield found


@pytest.fixture(scope="module")
def data(scratch: Path) -> tuple[Path, str]:
    """The 1 GiB random input and its SHA-256 (hex)."""
    path = scratch / "data.bin"
    return path, write_random_file(path, SIZE)


def task_sums(world: BigDataLab, task_id: str) -> dict[str, Any]:
    """What the SUMS_SCRIPT task printed: its inputs' SHA-256 and its output's."""
    printed = world.user.run("logs", task_id).stdout.strip().splitlines()
    sums: dict[str, Any] = json.loads(printed[-1])
    return sums


def succeeded(world: BigDataLab, task: dict[str, Any]) -> dict[str, Any]:
    assert task["status"] == "succeeded", f"{task}\n{world.logs()}"
    return task


# Four 1 GiB transfers over wireguard-go on a shared 2-core machine: minutes, not seconds.
@pytest.mark.timeout(900)
def test_a_1gib_input_becomes_a_1gib_result_with_bounded_memory(
    world: BigDataLab, data: tuple[Path, str], scratch: Path
) -> None:
    source, digest = data
    with PeakRss(world.finders()) as services:
        submitted = world.start(*sums_task({"data.bin": source}, SIZE // MIB, "--wait")).finish()
        task = succeeded(world, submitted.json())
        assert task["uploads"] == [
            {"name": "data.bin", "digest": f"sha256:{digest}", "size": SIZE, "sent_bytes": SIZE}
        ]
        out = scratch / "result"
        fetched = world.start("result", task["id"], "-o", str(out), "--json").finish()
        assert fetched.returncode == 0, fetched.stderr
    try:
        sums = json.loads((out / "sums.json").read_text())
        assert sums["inputs"] == {"data.bin": digest}, "the task read another input"
        assert file_size(out / "big.bin") == SIZE
        assert sha256_of(out / "big.bin") == sums["output"], "the result changed on the way"
    finally:
        shutil.rmtree(out, ignore_errors=True)
    peaks = services.peaks | {"cli submit": submitted.peak_rss, "cli result": fetched.peak_rss}
    assert all(0 < rss < BOUNDED_RSS for rss in peaks.values()), peaks


def test_the_same_input_again_travels_neither_to_the_hub_nor_to_the_worker(
    world: BigDataLab, data: tuple[Path, str]
) -> None:
    source, digest = data
    cache = world.mesh.agent_dir(world.worker) / "cache"
    [cached] = cache.rglob(digest)  # the input cache keeps files by digest
    kept = cached.stat()
    before = world.counters()
    again = world.start(*sums_task({"data.bin": source}, 0, "--wait")).finish()
    task = succeeded(world, again.json())
    carried = {name: after - before[name] for name, after in world.counters().items()}
    assert task["uploads"][0]["sent_bytes"] == 0, task["uploads"]
    assert task_sums(world, task["id"])["inputs"] == {"data.bin": digest}
    assert carried["laptop"].tx < CONTROL_BYTES, carried  # nothing went up to the hub
    assert carried["worker"].rx < CONTROL_BYTES, carried  # nor down to the worker
    assert cached.stat().st_ino == kept.st_ino, "fetched again"  # (its mtime is the LRU's)
    assert largest_file(cache, "*.part") == (None, 0)


@pytest.mark.timeout(600)
def test_a_killed_cli_resumes_its_upload_and_a_killed_agent_its_fetch(
    world: BigDataLab, scratch: Path
) -> None:
    source = scratch / "second.bin"
    digest = write_random_file(source, RESUME_SIZE)
    task_id = upload_killed_then_resumed(world, source, digest)
    fetch_killed_then_resumed(world, task_id, digest)


def upload_killed_then_resumed(world: BigDataLab, source: Path, digest: str) -> str:
    """SIGKILL the CLI once the hub holds half the upload; run it again: it sends only the
    rest. Returns the task then submitted."""
    uploads = world.mesh.hub_dir / "blobs" / "uploads"

    def partial() -> int:
        return largest_file(uploads)[1]

    arguments = sums_task({"second.bin": source}, 0, "--max-attempts", "3")
    first = world.start(*arguments)
    try:
        wait_for(lambda: partial() >= RESUME_SIZE // 2, "the upload under way", 180, world.logs)
    finally:
        first.kill()
    assert first.finish().returncode == -signal.SIGKILL
    held = settled_size(partial)
    assert RESUME_SIZE // 2 <= held < RESUME_SIZE, "the upload ended before the kill"
    before = interface_counters(world.laptop)
    task = world.start(*arguments).finish().json()
    carried = interface_counters(world.laptop) - before
    [upload] = task["uploads"]
    assert upload["digest"] == f"sha256:{digest}" and upload["size"] == RESUME_SIZE
    assert RESUME_SIZE - held <= upload["sent_bytes"] <= RESUME_SIZE - held // 2, (upload, held)
    assert carried.tx < RESUME_SIZE - held // 2, (carried, held)  # the overlay agrees
    return str(task["id"])


def fetch_killed_then_resumed(world: BigDataLab, task_id: str, digest: str) -> None:
    """SIGKILL the worker's agent once half the input is in its cache's partial file;
    restart it: the task's retry fetches only the rest, into the same file."""
    cache = world.mesh.agent_dir(world.worker) / "cache"

    def part() -> int:
        return largest_file(cache, f"*{digest}*.part")[1]

    agent = world.agent_pid()
    wait_for(lambda: part() >= RESUME_SIZE // 2, "the worker's fetch under way", 180, world.logs)
    os.kill(agent, signal.SIGKILL)
    # Until init reaps it, its pid still answers and ``join`` would take it for running.
    wait_for(lambda: not Path(f"/proc/{agent}").exists(), "the agent gone", 30, world.logs)
    fetched = settled_size(part, quiet=0.3)
    assert fetched < RESUME_SIZE, "the fetch ended before the kill"
    before = interface_counters(world.worker)
    with Sampled(part) as sizes:
        world.mesh.join(world.worker, "unused: enrolled already")  # comes back up
        done = succeeded(world, world.user.json("wait", task_id))
    carried = interface_counters(world.worker) - before
    assert task_sums(world, task_id)["inputs"] == {"second.bin": digest}
    assert carried.rx < RESUME_SIZE - fetched // 2, (carried, fetched, done["attempts"])
    assert min(sizes.values, default=fetched) >= fetched - 8 * MIB, "the fetch began again"
