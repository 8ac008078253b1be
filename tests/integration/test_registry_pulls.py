"""Images from a registry, against a real one: Debian's docker-registry on loopback.

A locally built image is pushed to the lab registry and removed from the engine; a task
naming it goes through a real pool (real Redis, mTLS gRPC) to a worker with the real
Docker executor, which pulls it: the task succeeds, its log shows the pull, its attempt
records the digest the registry gives. An image the hub's policy refuses is refused at
submission with nothing stored or held; one the registry lacks fails its task clearly and
costs nothing; with pulls off a missing image fails its task without a pull.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import grpc
import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.client import views
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.pool import constants as keys
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import Cluster, run_in_cluster
from tests.support.prerequisites import require
from tests.support.registry import LabRegistry, has_image, lab_registry

pytestmark = pytest.mark.privileged

BUSYBOX = "hivemind/busybox:latest"
FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}


@dataclass(frozen=True)
class Lab:
    registry: LabRegistry
    reference: str  # pushed, not in the engine before each test
    token: bytes  # what the image's /token holds


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    available, why = DockerExecutor.probe()
    require(available, f"docker is not available: {why}")
    require(shutil.which("docker-registry") is not None, "docker-registry is not installed")
    client = docker.from_env()
    require(has_image(client, BUSYBOX), f"image {BUSYBOX} is missing: run make images")
    yield client
    client.close()


@pytest.fixture(scope="module")
def lab_module(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    token = secrets.token_hex(8).encode()
    with lab_registry(tmp_path_factory.mktemp("registry"), docker_client) as registry:
        yield Lab(registry, registry.publish(BUSYBOX, "lab/busybox", "1", token), token)


@pytest.fixture
def lab(lab_module: Lab) -> Lab:
    """The lab, its image out of the engine again (an earlier test may have pulled it)."""
    lab_module.registry.remove(lab_module.reference)
    return lab_module


def submission(image: str, command: list[str]) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        image=image,
        command=command,
        resources=pb.Resources(cpu_millis=1000, memory_bytes=64 << 20),
        timeout_seconds=60,
    )


async def log_entries(stub: pb_grpc.TasksAsyncStub, task_id: str) -> list[pb.LogEntry]:
    return list((await stub.ReadLogs(pb.LogsRequest(task_id=task_id))).entries)


def system_lines(entries: list[pb.LogEntry]) -> list[str]:
    return [e.data.decode() for e in entries if e.stream == "system"]


def with_docker_worker(
    redis_server: RedisServer,
    tmp_path: Path,
    client: docker.DockerClient,
    body: Callable[[Cluster, pb_grpc.TasksAsyncStub], Awaitable[None]],
    **settings: object,
) -> None:
    """``body(cluster, operator stub)`` with worker w1 running the real Docker executor."""
    executor = DockerExecutor(tmp_path / "tasks", "w1", client=client, pids_limit=64)

    async def run(cluster: Cluster) -> None:
        await cluster.start_worker("w1", executor)
        await body(cluster, await cluster.operator_stub())

    (tmp_path / "hub").mkdir()
    try:
        run_in_cluster(redis_server, tmp_path / "hub", run, **settings)
    finally:
        executor.remove_leftovers()


def test_an_image_from_the_registry_is_pulled_run_and_its_digest_recorded(
    redis_server: RedisServer, tmp_path: Path, docker_client: docker.DockerClient, lab: Lab
) -> None:
    async def body(cluster: Cluster, stub: pb_grpc.TasksAsyncStub) -> None:
        task = await stub.Submit(submission(lab.reference, ["cat", "/token"]))
        done = await cluster.wait_status(stub, task.id, FINISHED, timeout=90)
        assert done.status == "succeeded", done.error
        entries = await log_entries(stub, task.id)
        assert b"".join(e.data for e in entries if e.stream == "stdout") == lab.token
        digest = lab.registry.manifest_digest(lab.reference)
        notes = system_lines(entries)
        assert f"pulling {lab.reference}" in notes
        assert any(n.startswith("layer ") and n.endswith(" done") for n in notes), notes
        assert any(n.startswith(f"pulled {lab.reference} {digest} in ") for n in notes), notes
        assert len(notes) < 12, notes  # a few lines, not one per chunk
        assert [a.image_digest for a in done.attempts] == [digest]
        view = views.task_view(done)
        assert view["image_digest"] == digest and view["attempts"][0]["image_digest"] == digest
        assert f"digest    {digest}" in views.describe_task(view)
        assert lab.registry.has(lab.reference)

    with_docker_worker(redis_server, tmp_path, docker_client, body)


def test_an_image_missing_from_the_registry_fails_its_task_clearly_and_costs_nothing(
    redis_server: RedisServer, tmp_path: Path, docker_client: docker.DockerClient, lab: Lab
) -> None:
    missing = lab.registry.reference("lab/missing", "1")

    async def body(cluster: Cluster, stub: pb_grpc.TasksAsyncStub) -> None:
        task = await stub.Submit(submission(missing, ["true"]))
        done = await cluster.wait_status(stub, task.id, FINISHED, timeout=60)
        assert done.status == "failed"
        assert done.error.startswith(f"could not pull {missing}: "), done.error
        assert "\n" not in done.error and not done.has_exit_code
        assert [a.image_digest for a in done.attempts] == [""]
        settled = await cluster.wait_settled(stub, task.id)
        assert settled.cost == 0
        assert f"pulling {missing}" in system_lines(await log_entries(stub, task.id))

    with_docker_worker(redis_server, tmp_path, docker_client, body)


def test_with_pulls_off_a_missing_image_fails_its_task_and_is_not_pulled(
    redis_server: RedisServer, tmp_path: Path, docker_client: docker.DockerClient, lab: Lab
) -> None:
    async def body(cluster: Cluster, stub: pb_grpc.TasksAsyncStub) -> None:
        task = await stub.Submit(submission(lab.reference, ["true"]))
        done = await cluster.wait_status(stub, task.id, FINISHED, timeout=60)
        assert done.status == "failed"
        assert "does not allow pulls (hub setting allow_pulls)" in done.error, done.error
        notes = system_lines(await log_entries(stub, task.id))
        assert not any(n.startswith("pulling") for n in notes), notes
        assert not lab.registry.has(lab.reference)
        assert (await cluster.wait_settled(stub, task.id)).cost == 0

    with_docker_worker(redis_server, tmp_path, docker_client, body, allow_pulls=False)


def test_a_refused_image_is_refused_at_submission_with_nothing_stored_or_held(
    redis_server: RedisServer, tmp_path: Path, docker_client: docker.DockerClient, lab: Lab
) -> None:
    async def body(cluster: Cluster, stub: pb_grpc.TasksAsyncStub) -> None:
        assert cluster.pool is not None
        db = cluster.pool.db
        journal_before = await db.xlen(keys.LEDGER_JOURNAL)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Submit(submission(lab.reference, ["true"]))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "hub setting allowed_images" in str(refused.value.details())
        assert lab.reference in str(refused.value.details())
        assert await cluster.pool.tasks.list_tasks() == []
        assert await db.zcard(keys.QUEUE) == 0
        assert await db.xlen(keys.LEDGER_JOURNAL) == journal_before  # no escrow
        # The local images the pattern names still run.
        task = await stub.Submit(submission(BUSYBOX, ["true"]))
        assert (await cluster.wait_status(stub, task.id, FINISHED)).status == "succeeded"

    with_docker_worker(
        redis_server, tmp_path, docker_client, body, allowed_images="hivemind/*, python:3.*"
    )
