"""A task's inputs in its container (real Docker): a ``file`` input bind-mounted read-only
from the worker's cache, a ``dir`` input unpacked read-only on the task's disk, both at
``/work/inputs/<name>``; neither comes back as a result, and the bundle and ``dir`` inputs
count toward the task's disk limit. One test takes an ``Assign`` from a fake hub's
``Blobs.Read`` through the worker's transfers (agent/transfers.py) to the container, the last
one a task's bundle, inputs and result through the real pool."""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
import zipfile
from pathlib import Path

import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.inputsources import UrlSource
from hivemind_cluster.agent.taskrun import TaskInput, task_run
from hivemind_cluster.agent.transfers import Transfers
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.blobs import DIR, FILE
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.protos import pool_pb2 as pb
from tests.integration import test_executor
from tests.integration.test_executor import run, sh
from tests.support.poolkit import Cluster, collected, in_a_cluster, upload
from tests.support.prerequisites import require_docker_images
from tests.support.scratch import zip_of
from tests.support.tasks import bundle_file
from tests.unit.test_input_cache import TASK, FakeBlobs, serving

pytestmark = pytest.mark.privileged

docker_client = test_executor.docker_client
executor = test_executor.executor
ENDED = {state.value for state in FINAL_STATES}


def cached(directory: Path, data: bytes) -> Path:
    """A blob as the input cache keeps one: read-only, world-readable."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / secrets.token_hex(32)
    path.write_bytes(data)
    path.chmod(0o444)
    return path


def test_a_file_input_is_mounted_read_only_and_not_returned(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    data = secrets.token_bytes(100_000)
    blob = cached(tmp_path / "cache", data)
    inputs = (TaskInput("data.bin", FILE, blob), TaskInput("again.bin", FILE, blob))
    script = (
        "cmp /work/inputs/data.bin /work/inputs/again.bin && cp /work/inputs/data.bin /out/copy;"
        "if echo x >> /work/inputs/data.bin; then echo wrote; else echo refused; fi;"
        "rm /work/inputs/data.bin 2>/dev/null && echo removed; true"
    )
    result = run(executor, sh(script, inputs=inputs))
    assert result.outcome.status == "succeeded", (result.outcome, result.chunks)
    assert "refused" in result.text("stdout") and "wrote" not in result.text("stdout")
    assert result.files() == {"copy": data}
    assert blob.read_bytes() == data


def test_a_dir_input_is_unpacked_read_only(executor: DockerExecutor, tmp_path: Path) -> None:
    zipped = bundle_file({"a.txt": "A", "sub/b.txt": "B"}, tmp_path / "cache")
    script = (
        "cat /work/inputs/d/a.txt /work/inputs/d/sub/b.txt > /out/both;"
        "touch /work/inputs/d/new 2>/dev/null && echo wrote || echo refused"
    )
    result = run(executor, sh(script, inputs=(TaskInput("d", DIR, zipped),)))
    assert result.outcome.status == "succeeded", (result.outcome, result.chunks)
    assert result.text("stdout") == "refused\n"
    assert result.files() == {"both": b"AB"}


def test_the_bundle_and_dir_inputs_count_toward_the_disk_limit(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    bundle = bundle_file({"half.bin": secrets.token_bytes(9 * MIB)}, tmp_path / "cache")
    zipped = bundle_file({"half.bin": secrets.token_bytes(9 * MIB)}, tmp_path / "cache")
    inputs = (TaskInput("d", DIR, zipped),)
    alone = run(executor, sh("true", bundle=bundle, disk_bytes=16 * MIB))
    assert alone.outcome.status == "succeeded", alone.outcome
    both = run(executor, sh("true", bundle=bundle, inputs=inputs, disk_bytes=16 * MIB))
    assert (both.outcome.status, both.outcome.exit_code) == ("failed", -1)
    assert both.outcome.error == "the bundle and inputs do not fit in the disk limit (16 MiB)"


def test_an_assignment_s_inputs_come_from_the_hub_into_the_container(
    executor: DockerExecutor, tmp_path: Path
) -> None:
    hub = FakeBlobs()
    bundle = hub.hold(bundle_file({"run.sh": "cat inputs/x.bin > /out/x"}, tmp_path).read_bytes())
    data = hub.hold(secrets.token_bytes(3 * MIB))
    assign = pb.Assign(
        task_id=TASK[0],
        attempt=TASK[1],
        image=test_executor.BUSYBOX,
        command=["sh", "run.sh"],
        resources=pb.Resources(cpu_millis=1000, memory_bytes=64 * MIB),
        timeout_seconds=30,
        bundle=pb.InputRef(digest=bundle.digest, size=bundle.size),
        inputs=[pb.InputRef(name="x.bin", digest=data.digest, size=data.size, kind=FILE)],
    )
    transfers = Transfers(tmp_path / "agent", 64 * MIB, UrlSource([]))
    notes: list[str] = []

    async def main() -> dict[str, bytes]:
        async with serving(hub) as channel:
            await transfers.connected(channel)
            async with transfers.inputs(assign, notes.append, threading.Event()) as fetched:
                the_task = task_run(assign, (), *fetched)
                return (await asyncio.to_thread(run, executor, the_task)).files()

    assert asyncio.run(main()) == {"x": hub.blobs[data.digest]}
    assert [digest for digest, _ in hub.reads] == [bundle.digest, data.digest]
    assert any("fetched 3 MiB" in note for note in notes), notes


@in_a_cluster()
async def test_inputs_and_results_travel_through_the_pool_and_inputs_are_fetched_once(
    cluster: Cluster,
) -> None:
    require_docker_images(test_executor.BUSYBOX).close()
    node_id = f"test-{secrets.token_hex(4)}"
    executor = DockerExecutor(Path(cluster.settings.state_dir) / "worker", node_id)
    worker = await cluster.start_worker(node_id, executor)
    stub = await cluster.operator_stub()
    data = secrets.token_bytes(3 * MIB)
    bundle = zip_of({"run.sh": "cat inputs/data.bin inputs/d/a.txt > /out/copy"})
    request = pb.SubmitRequest(
        image=test_executor.BUSYBOX,
        command=["sh", "run.sh"],
        bundle_digest=await upload(stub, bundle),
        inputs=[
            pb.InputRef(name="data.bin", digest=await upload(stub, data)),
            pb.InputRef(name="d", digest=await upload(stub, zip_of({"a.txt": "A"})), kind=DIR),
        ],
    )
    ended = []
    for _ in range(2):  # one after the other: the second finds them all in the cache
        task_id = (await stub.Submit(request)).id
        ended.append(await cluster.wait_status(stub, task_id, ENDED, timeout=120))
    for task in ended:
        assert task.status == "succeeded", task.error
        result = await collected(stub.ReadResult(pb.ResultRead(task_id=task.id)))
        assert result_members(result) == {"copy": data + b"A"}
    logs = await stub.ReadLogs(pb.LogsRequest(task_id=ended[1].id))
    system = [entry.data.decode() for entry in logs.entries if entry.stream == "system"]
    assert sum("from the cache" in line for line in system) == 3, system
    assert not any("fetching" in line for line in system), system
    assert len(worker.transfers.cache.entries) == 3
    assert list(worker.transfers.results_root.glob("*")) == [], "a result zip was kept"
    assert executor.remove_leftovers() == 0, "a task container was left behind"


def result_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}
