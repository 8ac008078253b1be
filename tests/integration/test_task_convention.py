"""The original task convention end to end: bundles with no command go through a real pool
(real Redis, mTLS gRPC) to a worker running them in real Docker containers.

The entry rules (the first ``*.py`` when none of the usual names is there; ``task_script.py``
before ``run.py``), a task.json choosing the entry point and the memory (and a flag winning
over it), and malformed bundles refused at submission with nothing stored or charged. Every
rule itself is in tests/unit/test_task_convention.py; this checks that what the pool decides
is what the container gets.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.model.spec import DEFAULT_PYTHON_IMAGE
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import Cluster, in_a_cluster, upload
from tests.support.prerequisites import require_docker_images
from tests.support.scratch import zip_of

pytestmark = pytest.mark.privileged

ENDED = {state.value for state in FINAL_STATES}
# What a task prints of how it was started: its file, unbuffered output, its PYTHONPATH.
HOW_IT_RAN = """\
import os, sys
print('ran', sys.argv[0])
print('unbuffered', sys.stdout.write_through)
print('path', os.environ['PYTHONPATH'])
"""
# Prints its greeting through a top-level module (found on PYTHONPATH from src/), and the
# memory limit of its own cgroup (v2 or v1, whichever the host has).
JOB = """\
import os, helpers
print(os.environ['GREETING'], 'from', helpers.WHO)
for limit in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
    if os.path.exists(limit):
        print('memory limit', open(limit).read().strip())
"""
MUST_NOT_RUN = "raise SystemExit('this file must not run')\n"


@pytest.fixture(scope="module", autouse=True)
def docker_with_the_python_image() -> None:
    require_docker_images(DEFAULT_PYTHON_IMAGE).close()


async def run_bundles(cluster: Cluster, *bundles: Bundled) -> list[tuple[pb.Task, str]]:
    """Each bundle run to its end on a worker with the real Docker executor: the task as
    the pool shows it then, and its output (stdout and stderr)."""
    node_id = f"test-{secrets.token_hex(4)}"
    executor = DockerExecutor(Path(cluster.settings.state_dir) / "worker", node_id)
    await cluster.start_worker(node_id, executor)
    stub = await cluster.operator_stub()
    ids = [(await stub.Submit(await submission(stub, bundled))).id for bundled in bundles]
    ended = []
    for task_id in ids:
        task = await cluster.wait_status(stub, task_id, ENDED, timeout=120)
        entries = stub.StreamLogs(pb.LogsRequest(task_id=task_id))
        output = [e.data async for e in entries if e.stream in ("stdout", "stderr")]
        ended.append((task, b"".join(output).decode()))
    assert executor.remove_leftovers() == 0, "a task container was left behind"
    return ended


# A bundle's files and the submission's other fields; the bundle is uploaded to submit it.
Bundled = tuple[dict[str, str], dict[str, Any]]


def bundle(files: dict[str, str], **fields: Any) -> Bundled:
    return files, fields


async def submission(stub: pb_grpc.TasksAsyncStub, bundled: Bundled) -> pb.SubmitRequest:
    """The request naming the bundle, uploaded first as a client does."""
    files, fields = bundled
    return pb.SubmitRequest(bundle_digest=await upload(stub, zip_of(files)), **fields)


@in_a_cluster()
async def test_the_first_python_file_runs_unbuffered_with_the_bundle_on_the_path(
    cluster: Cluster,
) -> None:
    files = {"zeta.py": MUST_NOT_RUN, "analysis.py": HOW_IT_RAN, "notes.txt": ""}
    [(task, output)] = await run_bundles(cluster, bundle(files))
    assert task.status == "succeeded", (task.error, output)
    assert (task.image, list(task.command)) == (
        DEFAULT_PYTHON_IMAGE,
        ["python", "/work/analysis.py"],
    )
    assert output == "ran /work/analysis.py\nunbuffered True\npath /work\n"


@in_a_cluster()
async def test_task_script_py_runs_before_run_py(cluster: Cluster) -> None:
    files = {"run.py": MUST_NOT_RUN, "app.py": MUST_NOT_RUN, "task_script.py": HOW_IT_RAN}
    [(task, output)] = await run_bundles(cluster, bundle(files))
    assert task.status == "succeeded", (task.error, output)
    assert output.startswith("ran /work/task_script.py\n")


@in_a_cluster()
async def test_task_json_sets_the_entry_point_and_the_memory_and_a_flag_wins(
    cluster: Cluster,
) -> None:
    document = {
        "entrypoint": "src/job.py",
        "requirements": {"memory_gb": 0.125},
        "timeout": 60,
        "env": {"GREETING": "hello"},
        "description": "a template's own key, ignored",
    }
    files = {
        "main.py": MUST_NOT_RUN,
        "task.json": json.dumps(document),
        "src/job.py": JOB,
        "helpers.py": "WHO = 'helpers'\n",
    }
    flag = pb.Resources(memory_bytes=256 << 20)
    (task, output), (flagged, flagged_output) = await run_bundles(
        cluster, bundle(files), bundle(files, resources=flag, env={"GREETING": "hi"})
    )
    assert task.status == "succeeded", (task.error, output)
    assert list(task.command) == ["python", "/work/src/job.py"] and task.timeout_seconds == 60
    assert task.resources.memory_bytes == 128 << 20
    assert output == f"hello from helpers\nmemory limit {128 << 20}\n"
    assert flagged.status == "succeeded", (flagged.error, flagged_output)
    assert flagged.resources.memory_bytes == 256 << 20
    assert flagged_output == f"hi from helpers\nmemory limit {256 << 20}\n"


@in_a_cluster()
async def test_a_malformed_bundle_is_refused_with_nothing_stored_or_charged(
    cluster: Cluster,
) -> None:
    stub = await cluster.operator_stub()
    balance = (await stub.Balance(pb.AccountRef())).balance
    refused_bundles = [
        ({"main.py": "", "task.json": "{not JSON"}, "task.json is not valid JSON"),
        ({"main.py": "", "task.json": '{"entrypoint": "gone.py"}'}, "is not a file in the bundle"),
        ({"main.py": "", "task.json": '{"requirements": {"memory_gb": "2G"}}'}, "memory_gb"),
        ({"data.csv": "1,2\n"}, "nothing to run: no command was given"),
    ]
    for files, message in refused_bundles:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Submit(await submission(stub, bundle(files)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (refused.value.details() or "")
    assert (await stub.List(pb.ListRequest())).tasks == []
    assert (await stub.Balance(pb.AccountRef())).balance == balance
