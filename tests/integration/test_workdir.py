"""A task's writable working copy and its disk limit, against the real Docker daemon.

The bundle is unpacked into a writable ``/work``: what the task creates or changes there comes
back in the result zip under its relative path, unchanged input files do not, ``/out`` files
stay at the top. ``/work``, ``/out`` and ``/tmp`` share one filesystem of the task's disk
limit: writing past it fails the task with "disk limit exceeded" without using the host's disk,
and no mount or loop device outlives the task, even one a crashed agent left.
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import grpc
import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskdisk import task_disk
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.protos import pool_pb2 as pb
from tests.integration import test_executor
from tests.integration.test_executor import BUSYBOX, PYTHON, result_of, run, sh, task
from tests.support.poolkit import Cluster, collected, in_a_cluster, upload
from tests.support.prerequisites import require_docker_images
from tests.support.scratch import zip_of
from tests.support.tasks import bundle_file

pytestmark = pytest.mark.privileged

# The Docker executor of test_executor.py, which checks that no container or task directory
# is left behind.
docker_client = test_executor.docker_client
executor = test_executor.executor
ENDED = {state.value for state in FINAL_STATES}


def leftovers(under: Path) -> list[str]:
    """Mounts and loop devices that still refer to anything under ``under``, after the
    moment the kernel takes to free a loop device once its filesystem is unmounted."""
    deadline = time.monotonic() + 5
    while True:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        found = [line for line in mounts + loops.splitlines() if str(under) in line]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_created_and_changed_files_come_back_with_their_paths(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    files = {"data/in.txt": "input", "keep.txt": "same", "edit.txt": "old"}
    script = (
        "mkdir -p output && echo '{}' > output/result.json;"
        "cat data/in.txt > copy.txt; echo new > edit.txt; cat keep.txt >/dev/null;"
        "echo out > /out/top.txt; echo tmp > /tmp/scratch"
    )
    result = run(executor, sh(script, bundle=bundle_file(files, tmp_path)))
    assert result.outcome.status == "succeeded", (result.outcome, result.chunks)
    assert result.files() == {
        "top.txt": b"out\n",
        "output/result.json": b"{}\n",
        "copy.txt": b"input",
        "edit.txt": b"new\n",
    }


def test_an_out_file_wins_over_a_working_file_of_the_same_path(executor: DockerExecutor) -> None:
    script = "echo work > /work/a.txt; echo out > /out/a.txt; mkdir /work/b; echo x > /work/b/c"
    result = run(executor, sh(script + "; echo file > /out/b"))
    assert result.outcome.status == "succeeded", result.outcome
    assert result.files() == {"a.txt": b"out\n", "b": b"file\n"}


def test_original_template_writes_its_results_to_output(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    main = (
        "import json, os\n"
        "os.makedirs('output', exist_ok=True)\n"
        "n = len(open('numbers.txt').read().split())\n"
        "json.dump({'n': n}, open('output/result.json', 'w'))\n"
    )
    bundle = bundle_file({"main.py": main, "numbers.txt": "1 2 3"}, tmp_path)
    result = run(executor, task(["python", "main.py"], image=PYTHON, bundle=bundle))
    assert result.outcome.status == "succeeded", (result.outcome, result.chunks)
    assert result.files() == {"output/result.json": b'{"n": 3}'}


def test_writing_past_the_disk_limit_fails_without_using_the_hosts_disk(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    # What the task holds of the host's disk is what its disk image has allocated: measured
    # while the task is still there, its disk as full as it gets. (The host's free space is
    # not a measure here: other tests write to the same disk at the same time.)
    held: list[int] = []

    def on_output(stream: str, data: bytes) -> None:
        if b"written" in data:
            (image,) = executor.work_root.glob("*/disk.img")
            held.append(image.stat().st_blocks * 512)

    script = (
        "for place in /work /out /tmp; do head -c 134217728 /dev/zero > $place/big; done;"
        "echo written"
    )
    outcome = executor.run(sh(script, disk_bytes=32 * MIB), on_output, threading.Event())
    result_of(outcome)
    assert outcome.status == "failed"
    assert outcome.error == "disk limit exceeded (limit 32 MiB)"
    assert held and held[0] <= 33 * MIB  # its 32 MiB (and the host's extent map) of 384 tried
    assert leftovers(tmp_path) == []


def test_a_task_that_hit_the_limit_and_cleaned_up_still_fails(executor: DockerExecutor) -> None:
    script = "dd if=/dev/zero of=/tmp/big bs=1M count=64; status=$?; rm /tmp/big; exit $status"
    result = run(executor, sh(script, disk_bytes=32 * MIB))
    assert "No space left on device" in result.text("stderr")
    assert (result.outcome.status, result.outcome.error) == (
        "failed",
        "disk limit exceeded (limit 32 MiB)",
    )


def test_a_task_within_its_limit_succeeds(executor: DockerExecutor, tmp_path: Path) -> None:
    script = "head -c 8388608 /dev/zero > /tmp/eight; head -c 8388608 /dev/zero > /work/eight"
    result = run(executor, sh(script + "; rm /work/eight; df -k /work | tail -1"))
    assert result.outcome.status == "succeeded", (result.outcome, result.chunks)
    assert result.files() == {}  # created, then removed: nothing comes back
    assert leftovers(tmp_path) == []


def test_the_default_disk_limit_is_one_gib(executor: DockerExecutor) -> None:
    result = run(executor, sh("df -k /work | tail -1; df -k /tmp | tail -1"))
    work, scratch = (line.split() for line in result.text("stdout").splitlines())
    assert work[1] == scratch[1]  # one filesystem
    assert 900 * 1024 < int(work[1]) <= 1024 * 1024


def test_remove_leftovers_unmounts_a_crashed_agents_disks(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    crashed = task_disk(executor.work_root / "t1-1", 32 * MIB)
    root = crashed.__enter__()  # never left: as if the agent died mid-task
    (root / "junk").write_bytes(b"x" * 1024)
    assert leftovers(tmp_path) != []
    executor.remove_leftovers()
    assert leftovers(tmp_path) == []
    assert list(executor.work_root.iterdir()) == []


async def run_through_the_pool(cluster: Cluster, *requests: pb.SubmitRequest) -> list[pb.Task]:
    """Each request run to its end by a worker with the real Docker executor."""
    node_id = f"test-{secrets.token_hex(4)}"
    worker = DockerExecutor(Path(cluster.settings.state_dir) / "worker", node_id)
    await cluster.start_worker(node_id, worker)
    stub = await cluster.operator_stub()
    ids = [(await stub.Submit(request)).id for request in requests]
    ended = [await cluster.wait_status(stub, task_id, ENDED, timeout=120) for task_id in ids]
    assert worker.remove_leftovers() == 0, "a task container was left behind"
    return ended


@in_a_cluster(task_disk_bytes=64 * MIB)
async def test_the_disk_request_reaches_the_task_from_a_flag_task_json_or_the_hub(
    cluster: Cluster,
) -> None:
    require_docker_images(BUSYBOX).close()
    df = ["sh", "-c", "df -k /work | tail -1 | awk '{print $2}' > /out/kib"]
    stub = await cluster.operator_stub()
    task_json = zip_of({"task.json": json.dumps({"requirements": {"storage_gb": 0.125}})})
    requests = [
        pb.SubmitRequest(image=BUSYBOX, command=df),
        pb.SubmitRequest(image=BUSYBOX, command=df, disk_bytes=32 * MIB),
        pb.SubmitRequest(image=BUSYBOX, command=df, bundle_digest=await upload(stub, task_json)),
        pb.SubmitRequest(image=BUSYBOX, command=["sh", "-c", "head -c 100000000 /dev/zero >big"]),
    ]
    tasks = await run_through_the_pool(cluster, *requests)
    assert [task.disk_bytes for task in tasks] == [64 * MIB, 32 * MIB, 128 * MIB, 64 * MIB]
    for ended, size in zip(tasks[:3], (64, 32, 128), strict=True):
        assert ended.status == "succeeded", ended.error
        result = await collected(stub.ReadResult(pb.ResultRead(task_id=ended.id)))
        with zipfile.ZipFile(io.BytesIO(result)) as archive:
            kib = int(archive.read("kib"))
        assert size * 1024 * 0.9 < kib <= size * 1024  # less what ext4 keeps for itself
    assert (tasks[3].status, tasks[3].error) == ("failed", "disk limit exceeded (limit 64 MiB)")


@in_a_cluster(max_task_disk_bytes=256 * MIB)
async def test_a_disk_over_the_hubs_maximum_is_refused(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Submit(pb.SubmitRequest(image=BUSYBOX, command=["true"], disk_bytes=1 << 30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "disk must be between 16 MiB and 256 MiB" in str(refused.value.details())


def test_a_bundle_larger_than_the_disk_never_runs(executor: DockerExecutor, tmp_path: Path) -> None:
    bundle = bundle_file({"data.bin": secrets.token_bytes(15 * MIB)}, tmp_path / "cache")
    result = run(executor, sh("true", bundle=bundle, disk_bytes=16 * MIB))
    assert (result.outcome.status, result.outcome.exit_code) == ("failed", -1)
    assert result.outcome.error == "bad input bundle: it does not fit in the disk limit (16 MiB)"
    assert leftovers(tmp_path) == []


def test_a_disk_the_worker_cannot_hold_is_handed_back(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    with pytest.raises(SystemFailure, match="of free disk, less than the task's limit of 1024 TiB"):
        run(executor, sh("true", disk_bytes=1 << 50))
    assert leftovers(tmp_path) == []
