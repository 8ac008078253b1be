"""What bounds the audit log. A retried action is the same action: a submission or a tip
sent again with the same idempotency key (as the CLIs do after a lost reply) leaves one
entry, not two. Refused enrollments come from anyone on the underlay: one address gets
at most REFUSALS_RECORDED entries a minute. The rest of the audit log's tests are
tests/integration/test_audit.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from hivemind_cluster.client.channel import sync_channel
from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.core.audit import AuditLog
from hivemind_cluster.core.errors import TokenRejected
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import audits
from hivemind_cluster.protos import pool_pb2 as pb
from tests.integration.test_audit import BUSYBOX, PROJECT, audit_world
from tests.support.scratch import connect_with_every_library
from tests.support.webkit import WebCluster

pytestmark = pytest.mark.privileged


@pytest.fixture
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebCluster]:
    with audit_world(redis_server, tmp_path_factory.mktemp("retries")) as found:
        yield found


def test_a_submission_or_tip_sent_again_is_recorded_once(world: WebCluster) -> None:
    identity = world.run(world.cluster.add_node("op1", "operator"))
    channel = sync_channel(identity)
    world.channels.append(channel)
    pool = GrpcTaskClient(channel)
    pool.balance("")  # opens its account, with the grant
    body = BUSYBOX | {"command": ["block"], "idempotency_key": "submit-once"}
    first, again = pool.submit(body), pool.submit(body)
    assert first["id"] == again["id"]
    tip = pb.TipRequest(project=PROJECT, amount=1000, idempotency_key="tip-once")
    paid, repaid = pool.stub.Tip(tip), pool.stub.Tip(tip)
    assert paid.id == repaid.id
    fresh = pool.submit(BUSYBOX | {"command": ["block"], "idempotency_key": "another"})
    audit = AuditLog(world.db())
    assert [e.target for e in audit.entries(action="task.submit")] == [first["id"], fresh["id"]]
    assert [e.target for e in audit.entries(action="ledger.tip")] == [PROJECT]


def test_refused_enrollments_from_one_address_are_recorded_a_few_a_minute(
    redis_server: RedisServer,
) -> None:
    db = connect_with_every_library(redis_server)
    try:
        db.flushall()
        counted = (
            REGISTRY.get_sample_value(
                "hivemind_enrollment_attempts_total", {"outcome": "token_rejected"}
            )
            or 0.0
        )
        refused = TokenRejected("unknown or revoked token")
        for _ in range(audits.REFUSALS_RECORDED + 10):
            audits.enrollment(db, "0123456789ab", "198.51.100.66", None, refused)
        audits.enrollment(db, "0123456789ab", "198.51.100.67", None, refused)  # another
        entries = AuditLog(db).entries(action="enrollment.refuse")
        by_source = [e.source for e in entries]
        assert by_source.count("198.51.100.66") == audits.REFUSALS_RECORDED + 1
        assert by_source.count("198.51.100.67") == 1
        assert "the rest are only counted" in entries[audits.REFUSALS_RECORDED].detail
        assert (
            REGISTRY.get_sample_value(
                "hivemind_enrollment_attempts_total", {"outcome": "token_rejected"}
            )
            == counted + audits.REFUSALS_RECORDED + 11
        )
        assert AuditLog(db).verify() == (len(entries), None)
    finally:
        db.close()
