"""A task cancelled while its agent is disconnected: the pool's cancel reaches the agent
when it reconnects (it used to come before the answer to the registration, so that every
reconnect failed and the task ran on). Real pool, Redis, gRPC and ``Worker``."""

from __future__ import annotations

import pytest

from hivemind_cluster.protos import pool_pb2 as pb
from tests.integration.test_pool import submit
from tests.integration.test_superseded_status import cut_off
from tests.support.poolkit import Cluster, ScriptedExecutor, block_until_cancelled, in_a_cluster

pytestmark = pytest.mark.privileged


@in_a_cluster()
async def test_a_cancel_requested_while_the_agent_was_away_reaches_it(cluster: Cluster) -> None:
    executor = ScriptedExecutor(block_until_cancelled)
    worker = await cluster.start_worker("w1", executor)
    stub = await cluster.operator_stub()
    task = await stub.Submit(submit(["x"]))
    await cluster.until(lambda: len(executor.started) == 1, "started")
    reachable = await cut_off(cluster, worker)
    assert (await stub.Cancel(pb.TaskRef(task_id=task.id))).cancel_requested
    worker.identity = reachable
    done = await cluster.wait_status(stub, task.id, {"cancelled"}, timeout=30)
    assert done.attempt == 1 and [a.status for a in done.attempts] == ["cancelled"]
