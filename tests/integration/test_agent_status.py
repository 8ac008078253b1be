"""The agent's status page against the real pool on loopback (real Redis, real mTLS gRPC):
a task run by a worker shows up in its recent tasks, its earnings equal the task's cost in
the ledger, and the worker may read its own account and nobody else's."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
from typing import Any

import grpc
import pytest

from hivemind_cluster.agent.state import Enrollment
from hivemind_cluster.agent.statuspage import StatusPage
from hivemind_cluster.agent.statusserver import StatusServer
from hivemind_cluster.client.channel import Identity, aio_channel
from hivemind_cluster.model.accounts import REGISTRATION_GRANT
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc
from tests.support.poolkit import LOOPBACK, Cluster, ScriptedExecutor, echo, in_a_cluster
from tests.support.scratch import free_port

pytestmark = pytest.mark.privileged


def enrollment_of(identity: Identity) -> Enrollment:
    """The worker's saved state as join would write it; its interface does not exist here."""
    return Enrollment(
        node_id=identity.node_id,
        name=f"name-{identity.node_id}",
        role="worker",
        overlay_ip=LOOPBACK,
        overlay_prefix=24,
        hub_ip=LOOPBACK,
        hub_public_key="unused",
        hub_endpoint="",
        hub_allowed_ips=(),
        persistent_keepalive=25,
        pool_address=identity.pool_address,
        enroll_endpoint="",
        interface="hmstatus0",
        backend="userspace",
        enrolled_at=time.time(),
    )


async def fetch(url: str) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()

    return await asyncio.to_thread(get)  # the pool runs on this thread's event loop


async def own_ledger_call(identity: Identity, account: str, history: bool = False) -> Any:
    async with aio_channel(identity) as channel:
        stub = pb_grpc.TasksStub(channel)
        if history:
            return await stub.History(pb.HistoryRequest(account=account), timeout=5)
        return await stub.Balance(pb.AccountRef(account=account), timeout=5)


async def refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code()


@in_a_cluster()
async def test_the_page_shows_a_finished_task_and_what_it_earned(cluster: Cluster) -> None:
    worker = await cluster.start_worker("w1", ScriptedExecutor(echo))
    stub = await cluster.operator_stub()
    task = await stub.Submit(
        pb.SubmitRequest(
            image="hivemind/busybox:latest",
            command=["echo", "<paid>"],
            resources=pb.Resources(cpu_millis=1000, memory_bytes=256 << 20),
        )
    )
    await cluster.wait_status(stub, task.id, {"succeeded"})
    settled = await cluster.wait_settled(stub, task.id)
    assert settled.cost > 0
    # The ledger's own record of the payment, read by the hub.
    async with aio_channel(await cluster.add_node("hub", "hub")) as channel:
        journal = await pb_grpc.TasksStub(channel).History(pb.HistoryRequest(account="w1"))
    paid = [e for e in journal.entries if e.idempotency_key == f"pay:{task.id}"]
    assert [(e.target, e.amount) for e in paid] == [("w1", settled.cost)]

    page = StatusPage(enrollment_of(worker.identity), worker.identity, worker, ledger_ttl=0)
    server = StatusServer(page, LOOPBACK, 0).start()
    try:
        code, raw = await fetch(server.url + "status.json")
        assert code == 200
        doc = json.loads(raw)
        assert doc["node"]["id"] == "w1" and doc["node"]["overlay_ip"] == LOOPBACK
        assert doc["hub"]["connected"] is True and doc["hub"]["since"] is not None
        assert doc["hub"]["last_sent"] is not None
        assert doc["overlay"]["up"] is False  # no WireGuard in this test
        recent = doc["tasks"]["recent"]
        assert [(t["task_id"], t["status"], t["exit_code"]) for t in recent] == [
            (task.id, "succeeded", 0)
        ]
        assert recent[0]["earned_micro"] == settled.cost
        assert doc["tasks"]["running"] == [] and doc["tasks"]["completed"] == 1
        ledger = doc["ledger"]
        assert ledger["available"] and ledger["account"] == "w1"
        assert ledger["kind"] == "worker" and ledger["earned_micro"] == settled.cost
        assert ledger["balance_micro"] == REGISTRATION_GRANT + settled.cost
        code, html = await fetch(server.url)
        assert code == 200 and task.id.encode() in html
    finally:
        server.stop()


@in_a_cluster()
async def test_a_worker_reads_its_own_account_only(cluster: Cluster) -> None:
    await cluster.add_node("op", "operator")
    # A worker that asks before its stream ever connected: its account opens as a
    # worker's, and connecting later neither changes that nor grants it twice.
    early = await cluster.add_node("w2", "worker")
    balance = await own_ledger_call(early, "")
    assert (balance.account, balance.kind, balance.balance) == (
        "w2",
        "worker",
        REGISTRATION_GRANT,
    )
    await cluster.start_worker("w2", ScriptedExecutor(echo))
    again = await own_ledger_call(early, "w2")
    assert (again.kind, again.balance) == ("worker", REGISTRATION_GRANT)
    history = await own_ledger_call(early, "", history=True)
    assert [e.idempotency_key for e in history.entries] == ["grant:w2"]
    # Anybody else's account, and the rest of the tasks API, stay closed to a worker.
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await refused(own_ledger_call(early, "op")) == denied
    assert await refused(own_ledger_call(early, "op", history=True)) == denied
    assert await refused(own_ledger_call(early, "treasury")) == denied
    async with aio_channel(early) as channel:
        tasks = pb_grpc.TasksStub(channel)
        assert await refused(tasks.List(pb.ListRequest(), timeout=5)) == denied
        assert await refused(tasks.GetRateCard(pb.RateCardRequest(), timeout=5)) == denied
        tip = pb.TipRequest(project="op", amount=1)
        assert await refused(tasks.Tip(tip, timeout=5)) == denied


@in_a_cluster()
async def test_an_unreachable_pool_leaves_the_page_up_with_the_ledger_unavailable(
    cluster: Cluster,
) -> None:
    identity = await cluster.add_node("w3", "worker")
    nowhere = dataclasses.replace(identity, pool_address=f"{LOOPBACK}:{free_port()}")
    page = StatusPage(enrollment_of(nowhere), nowhere, None)
    server = StatusServer(page, LOOPBACK, 0).start()
    try:
        code, raw = await fetch(server.url + "status.json")
        assert code == 200
        ledger = json.loads(raw)["ledger"]
        assert ledger["available"] is False and ledger["balance_micro"] is None
        assert ledger["error"]
        first = ledger["fetched_at"]
        # Cached: a second request within the TTL does not ask again.
        assert (
            json.loads((await fetch(server.url + "status.json"))[1])["ledger"]["fetched_at"]
            == first
        )
        code, html = await fetch(server.url)
        assert code == 200 and b"unavailable" in html
    finally:
        server.stop()
