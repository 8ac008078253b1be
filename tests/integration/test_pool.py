"""The pool over real mTLS gRPC on loopback with a real Redis; executors are scripted.

Covers the stream protocol, scheduling by capacity, the lost-worker requeue with fencing,
cancel, submission checks and the authentication table. Docker runs are in
test_executor.py; the same over a WireGuard overlay in tests/e2e/test_pool_mesh.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.taskrun import NO_USAGE, OnOutput, Outcome, TaskRun
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity, aio_channel
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants as mesh_keys
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.pool import members, watchdog
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.late_result import report as late_result
from tests.support.poolkit import (
    LOSS_TIMEOUT,
    Cluster,
    GiB,
    ScriptedExecutor,
    block_until_cancelled,
    echo,
    in_a_cluster,
    run_in_cluster,
    succeed_after,
)

pytestmark = pytest.mark.privileged


def submit(
    command: list[str], cpu: int = 1000, memory: int = 256 << 20, **kw: Any
) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        image="hivemind/busybox:latest",
        command=command,
        resources=pb.Resources(cpu_millis=cpu, memory_bytes=memory),
        **kw,
    )


def started_more_than(executor: ScriptedExecutor, count: int) -> Callable[[], bool]:
    return lambda: len(executor.started) > count


async def logs_of(stub: pb_grpc.TasksAsyncStub, task_id: str) -> list[tuple[str, bytes]]:
    return [(e.stream, e.data) async for e in stub.StreamLogs(pb.LogsRequest(task_id=task_id))]


@in_a_cluster()
async def test_a_task_runs_streams_logs_and_reports_usage(cluster: Cluster) -> None:
    await cluster.start_worker("w1", ScriptedExecutor(echo))
    stub = await cluster.operator_stub()
    task = await stub.Submit(submit(["echo", "hello"], name="greeting"))
    assert task.status in {"queued", "assigned"} and task.attempt == 1
    done = await cluster.wait_status(stub, task.id, {"succeeded"})
    assert done.node_id == "w1" and done.exit_code == 0 and done.has_exit_code
    assert done.usage.cpu_seconds == 0.5 and done.usage.peak_memory_bytes == 1 << 20
    assert [a.status for a in done.attempts] == ["succeeded"]
    assert ("stdout", b"echo hello\n") in await logs_of(stub, task.id)
    listed = await stub.List(pb.ListRequest())
    assert [t.id for t in listed.tasks] == [task.id]
    nodes = {n.id: n for n in (await stub.ListNodes(pb.ListNodesRequest())).nodes}
    assert nodes["w1"].connected and nodes["w1"].capacity.cpu_millis == 2000
    assert nodes["w1"].allocated.cpu_millis == 0


@in_a_cluster()
async def test_capacity_is_never_overcommitted_and_order_is_fifo(cluster: Cluster) -> None:
    releases: dict[str, threading.Event] = {}  # task id -> lets that task finish
    running_now: list[str] = []
    peak = [0]

    def hold(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        running_now.append(task.task_id)
        peak[0] = max(peak[0], len(running_now))
        releases.setdefault(task.task_id, threading.Event()).wait(30)
        running_now.remove(task.task_id)
        return Outcome("succeeded", 0, "", NO_USAGE)

    def release(task_id: str) -> None:
        releases.setdefault(task_id, threading.Event()).set()

    executor = ScriptedExecutor(hold)
    await cluster.start_worker("w1", executor)
    stub = await cluster.operator_stub()
    ids = [(await stub.Submit(submit(["true"], name=f"t{i}"))).id for i in range(5)]
    await cluster.until(lambda: len(executor.started) == 2, "two tasks running")
    await asyncio.sleep(0.5)
    assert len(executor.started) == 2, "a 2-CPU worker must not take a third 1-CPU task"
    assert {t.task_id for t in executor.started} == set(ids[:2])
    # One slot frees at a time, so which task takes it is the scheduler's choice alone:
    # FIFO gives it to the oldest still queued.
    for n in range(2, 5):
        release(executor.started[n - 2].task_id)
        await cluster.until(started_more_than(executor, n), f"task {n} started")
        assert executor.started[n].task_id == ids[n]
    for task_id in ids:
        release(task_id)
    for task_id in ids:
        await cluster.wait_status(stub, task_id, {"succeeded"})
    assert len(executor.started) == 5 and peak[0] == 2


@in_a_cluster()
async def test_tasks_spread_over_workers_by_free_capacity(cluster: Cluster) -> None:
    big, small = (
        ScriptedExecutor(block_until_cancelled),
        ScriptedExecutor(block_until_cancelled),
    )
    await cluster.start_worker("big", big, Resources(4000, 8 * GiB, 0))
    await cluster.start_worker("small", small, Resources(1000, 2 * GiB, 0))
    stub = await cluster.operator_stub()
    ids = [(await stub.Submit(submit(["sleep"]))).id for _ in range(5)]
    await cluster.until(lambda: len(big.started) + len(small.started) == 5, "5 placed")
    assert (len(big.started), len(small.started)) == (4, 1)
    for task_id in ids:
        await stub.Cancel(pb.TaskRef(task_id=task_id))
    for task_id in ids:
        await cluster.wait_status(stub, task_id, {"cancelled"})


@in_a_cluster(heartbeat_timeout=LOSS_TIMEOUT)
async def test_a_lost_worker_is_requeued_once_and_its_late_result_refused(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    survivor = ScriptedExecutor(echo)
    task = await cluster.lose_a_worker_mid_task(stub, submit(["work"], max_attempts=3), survivor)
    done = await cluster.wait_status(stub, task.id, {"succeeded"}, timeout=30)
    assert done.attempt == 2 and done.node_id == "survivor"
    assert [(a.attempt, a.node_id, a.status) for a in done.attempts] == [
        (1, "doomed", "lost"),
        (2, "survivor", "succeeded"),
    ]
    assert len(survivor.started) == 1
    # The killed attempt reports late over a fresh stream: refused, nothing changes.
    identity = await cluster.add_node("doomed", "worker")
    reply = await late_result(identity, task.id, attempt=1, status="failed")
    assert reply.WhichOneof("kind") == "rejected"
    assert "no longer current" in reply.rejected.reason
    after = await stub.Get(pb.TaskRef(task_id=task.id))
    assert after.status == "succeeded" and after.attempt == 2 and after.node_id == "survivor"


@in_a_cluster()
async def test_cancel_stops_a_running_task_and_a_queued_one(cluster: Cluster) -> None:
    executor = ScriptedExecutor(block_until_cancelled)
    await cluster.start_worker("w1", executor, Resources(1000, 4 * GiB, 0))
    stub = await cluster.operator_stub()
    running = await stub.Submit(submit(["a"]))
    waiting = await stub.Submit(submit(["b"]))
    await cluster.until(lambda: len(executor.started) == 1, "first started")
    assert (await stub.Cancel(pb.TaskRef(task_id=waiting.id))).status == "cancelled"
    assert (await stub.Cancel(pb.TaskRef(task_id=running.id))).cancel_requested
    done = await cluster.wait_status(stub, running.id, {"cancelled"})
    assert done.exit_code == 137
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Cancel(pb.TaskRef(task_id=running.id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already cancelled" in (refused.value.details() or "")
    assert len(executor.started) == 1


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (submit(["x"], cpu=8000), "FAILED_PRECONDITION", "no node could ever run this task"),
        (submit(["x"], memory=1 << 40), "FAILED_PRECONDITION", "no node could ever run"),
        (submit(["x"], cpu=-5), "INVALID_ARGUMENT", "CPU (millicores) must be between"),
        (submit(["x"], memory=1024), "INVALID_ARGUMENT", "memory must be between"),
        (
            pb.SubmitRequest(image="Bad Image!", command=["x"]),
            "INVALID_ARGUMENT",
            "not a valid image",
        ),
        (pb.SubmitRequest(command=["x"]), "INVALID_ARGUMENT", "no image"),
        (submit(["x"], network=True), "PERMISSION_DENIED", "does not allow tasks with network"),
        (submit(["x"], timeout_seconds=10**6), "INVALID_ARGUMENT", "timeout must be between"),
        (submit(["x"], priority=12), "INVALID_ARGUMENT", "priority must be between"),
        (submit(["a\0b"]), "INVALID_ARGUMENT", "NUL"),
        (submit(["x"], bundle_digest="not a digest"), "INVALID_ARGUMENT", "sha256:<64 hex"),
        (submit(["x"], owner="someone-else"), "PERMISSION_DENIED", "on behalf of"),
    ],
)
def test_bad_submissions_are_refused_and_store_nothing(
    redis_server: RedisServer, tmp_path: Path, request_: pb.SubmitRequest, code: str, message: str
) -> None:
    async def body(cluster: Cluster) -> None:
        await cluster.start_worker("w1", ScriptedExecutor())
        stub = await cluster.operator_stub()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Submit(request_)
        assert refused.value.code().name == code
        assert message in (refused.value.details() or "")
        assert (await stub.List(pb.ListRequest())).tasks == []

    run_in_cluster(redis_server, tmp_path, body)


@in_a_cluster()
async def test_with_no_worker_yet_a_task_is_accepted_and_waits(cluster: Cluster) -> None:
    stub = await cluster.operator_stub()
    task = await stub.Submit(submit(["echo", "later"], cpu=1500))
    await asyncio.sleep(0.3)
    assert (await stub.Get(pb.TaskRef(task_id=task.id))).status == "queued"
    await cluster.start_worker("w1", ScriptedExecutor(echo))
    await cluster.wait_status(stub, task.id, {"succeeded"})


async def call_code(identity: Identity, method: str) -> grpc.StatusCode:
    async with aio_channel(identity) as channel:
        try:
            if method == "tasks":
                await pb_grpc.TasksStub(channel).List(pb.ListRequest(), timeout=5)
            else:
                call = pb_grpc.PoolStub(channel).Connect(timeout=5)
                await call.write(
                    pb.AgentMessage(
                        register=pb.Register(
                            capacity=pb.Resources(cpu_millis=1000, memory_bytes=GiB)
                        )
                    )
                )
                await call.read()
                call.cancel()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@in_a_cluster()
async def test_the_pool_refuses_wrong_callers(cluster: Cluster) -> None:
    assert cluster.pool is not None
    operator = await cluster.add_node("op", "operator")
    worker = await cluster.add_node("w1", "worker")
    assert await call_code(operator, "tasks") == grpc.StatusCode.OK
    # Roles: a worker may not use the tasks API, an operator may not act as a worker.
    assert await call_code(worker, "tasks") == grpc.StatusCode.PERMISSION_DENIED
    assert await call_code(operator, "pool") == grpc.StatusCode.PERMISSION_DENIED
    # A valid certificate bound to another overlay address.
    elsewhere = await cluster.add_node("op2", "operator", overlay_ip="127.0.0.9")
    assert await call_code(elsewhere, "tasks") == grpc.StatusCode.PERMISSION_DENIED
    # A revoked certificate.
    cert = x509.load_pem_x509_certificate(operator.cert_pem)
    await cluster.pool.db.sadd(mesh_keys.REVOKED_SERIALS, str(cert.serial_number))
    assert await call_code(operator, "tasks") == grpc.StatusCode.PERMISSION_DENIED
    # No client certificate at all: the TLS handshake fails.
    bare = grpc.ssl_channel_credentials(cluster.ca.pem)
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{cluster.port}",
        bare,
        options=[("grpc.ssl_target_name_override", "hub.hivemind.internal")],
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.TasksStub(channel).List(pb.ListRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # A certificate from another CA.
    other_cert, other_key = CertificateAuthority.create().issue_client_certificate(
        "op", "127.0.0.1"
    )
    stranger = Identity("op", other_cert, other_key, cluster.ca.pem, operator.pool_address)
    assert await call_code(stranger, "tasks") == grpc.StatusCode.UNAVAILABLE


@in_a_cluster(heartbeat_timeout=30)
async def test_drain_finishes_running_work_and_takes_no_more(cluster: Cluster) -> None:
    finish = threading.Event()
    executor = ScriptedExecutor(succeed_after(finish))
    worker = await cluster.start_worker("w1", executor, drain_seconds=10)
    stub = await cluster.operator_stub()
    first = await stub.Submit(submit(["a"]))
    await cluster.until(lambda: len(executor.started) == 1, "first started")
    worker.drain()
    await cluster.until(
        lambda: cluster.pool is not None and cluster.pool.scheduler.workers["w1"].draining,
        "the pool sees the worker draining",
    )
    second = await stub.Submit(submit(["b"]))
    await asyncio.sleep(0.5)
    assert (await stub.Get(pb.TaskRef(task_id=second.id))).status == "queued"
    finish.set()
    assert (await cluster.wait_status(stub, first.id, {"succeeded"})).attempt == 1
    assert len(executor.started) == 1


# A long heartbeat timeout: only the drain and the halt may end these attempts.
@in_a_cluster(heartbeat_timeout=30)
async def test_drain_past_its_window_hands_tasks_back_and_halt_is_immediate(
    cluster: Cluster,
) -> None:
    executor = ScriptedExecutor(block_until_cancelled)
    worker = await cluster.start_worker("w1", executor, drain_seconds=1)
    stub = await cluster.operator_stub()
    task = await stub.Submit(submit(["a"]))
    await cluster.until(lambda: len(executor.started) == 1, "started")
    worker.drain()
    handed_back = await cluster.wait_status(stub, task.id, {"queued"}, timeout=30)
    assert handed_back.attempt == 2
    assert [(a.attempt, a.status) for a in handed_back.attempts] == [(1, "interrupted")]
    # A second worker halted at once: its task comes back without waiting a window.
    executor2 = ScriptedExecutor(block_until_cancelled)
    worker2 = await cluster.start_worker("w2", executor2, drain_seconds=60)
    await cluster.until(lambda: len(executor2.started) == 1, "retried on w2")
    worker2.halt()
    again = await cluster.wait_status(stub, task.id, {"queued"}, timeout=30)
    assert again.attempt == 3


@in_a_cluster()
async def test_a_worker_that_reconnects_resumes_its_running_task(cluster: Cluster) -> None:
    assert cluster.pool is not None
    finish = threading.Event()
    executor = ScriptedExecutor(succeed_after(finish, stdout=b"after the blip\n"))
    await cluster.start_worker("w1", executor)
    stub = await cluster.operator_stub()
    task = await stub.Submit(submit(["a"]))
    await cluster.until(lambda: len(executor.started) == 1, "started")
    first_session = cluster.sessions()["w1"]
    first_session.close()  # the stream drops, as in a network blip
    await cluster.until(
        lambda: cluster.sessions().get("w1") not in (None, first_session), "reconnected"
    )
    assert cluster.pool.scheduler.tasks_on("w1") == [task.id]
    finish.set()
    done = await cluster.wait_status(stub, task.id, {"succeeded"})
    assert done.attempt == 1 and [a.status for a in done.attempts] == ["succeeded"]
    assert ("stdout", b"after the blip\n") in await logs_of(stub, task.id)
    assert len(executor.started) == 1


def test_an_assignment_that_never_starts_is_taken_back(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchdog, "START_DEADLINE", 1)

    async def body(cluster: Cluster) -> None:
        silent = await cluster.add_node("silent", "worker")
        stub = await cluster.operator_stub()
        async with aio_channel(silent) as channel:
            call = pb_grpc.PoolStub(channel).Connect()
            capacity = pb.Resources(cpu_millis=1000, memory_bytes=GiB)
            await call.write(pb.AgentMessage(register=pb.Register(capacity=capacity)))
            await call.read()
            task = await stub.Submit(submit(["x"]))
            assign = await call.read()  # received, then ignored: the agent is stuck
            assert isinstance(assign, pb.PoolMessage) and assign.assign.task_id == task.id
            deadline = time.monotonic() + 30
            while (taken_back := await stub.Get(pb.TaskRef(task_id=task.id))).attempt == 1:
                assert time.monotonic() < deadline, taken_back
                # Keep heartbeating: the node itself is not lost.
                await call.write(pb.AgentMessage(heartbeat=pb.Heartbeat()))
                await asyncio.sleep(0.2)
            call.cancel()
        assert taken_back.attempt == 2, taken_back
        assert "not started" in taken_back.attempts[0].error

    run_in_cluster(redis_server, tmp_path, body)


def test_registration_lists_finished_but_unacknowledged_attempts() -> None:
    identity = Identity("w1", b"", b"", b"", "127.0.0.1:1")
    worker = Worker(identity, ScriptedExecutor(), Facts(Resources(1000, GiB, 0)))
    worker.unacknowledged[("t000000000001", 2)] = pb.TaskResult(task_id="t000000000001")
    running = worker._registration().running
    assert [(r.task_id, r.attempt) for r in running] == [("t000000000001", 2)]


@in_a_cluster()
async def test_only_current_members_count_for_could_never_fit(cluster: Cluster) -> None:
    assert cluster.pool is not None
    await cluster.start_worker("big", ScriptedExecutor(echo), Resources(8000, 2 * GiB, 0))
    await cluster.start_worker("small", ScriptedExecutor(echo), Resources(1000, 8 * GiB, 0))
    stub = await cluster.operator_stub()
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # no single worker has both
        await stub.Submit(submit(["x"], cpu=4000, memory=4 * GiB))
    assert "largest node offers 8 CPU, 8 GiB memory" in (refused.value.details() or "")
    assert (await stub.Submit(submit(["x"], cpu=4000))).id
    await cluster.pool.db.hset(mesh_keys.NODE.format(id="big"), "state", "revoked")
    await asyncio.sleep(members.MEMBERS_TTL + 0.1)  # membership is re-read this often
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.Submit(submit(["x"], cpu=4000))
    assert "largest node offers 1 CPU" in (gone.value.details() or "")


@in_a_cluster()
async def test_each_gpu_task_gets_devices_of_its_own(cluster: Cluster) -> None:
    release = threading.Event()
    executor = ScriptedExecutor(succeed_after(release))
    gpus = (pb.Gpu(index=0, uuid="GPU-a"), pb.Gpu(index=1, uuid="GPU-b"))
    await cluster.start_worker("g", executor, Resources(4000, 8 * GiB, 2), gpus=gpus)
    stub = await cluster.operator_stub()
    one_gpu = pb.SubmitRequest(
        image="hivemind/busybox:latest",
        command=["x"],
        resources=pb.Resources(cpu_millis=1000, memory_bytes=256 << 20, gpus=1),
    )
    ids = [(await stub.Submit(one_gpu)).id for _ in range(3)]
    await cluster.until(lambda: len(executor.started) == 2, "two GPU tasks running")
    await asyncio.sleep(0.3)
    assert sorted(t.gpu_ids for t in executor.started) == [("GPU-a",), ("GPU-b",)]
    release.set()
    for task_id in ids:
        await cluster.wait_status(stub, task_id, {"succeeded"})
    assert len(executor.started[2].gpu_ids) == 1  # the third got a freed device
