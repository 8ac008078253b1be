"""What the mesh writes to the hub's audit log (core/audit.py): enrollments accepted and
refused (counted for Prometheus in the same place, mesh/metrics.py), nodes leaving or
revoked, hub.toml's policy applied or refused.

The token id of a refused enrollment is recorded only when it is well formed (it comes
from whoever dialled the hub); the secret never is. The enrollment port is on the
underlay, open to anyone: refusals from one source address are written at most
REFUSALS_RECORDED a minute (one more entry says the rest are only counted), so nobody can
grow the log at network speed; the Prometheus counter still counts every attempt.
"""

from __future__ import annotations

import re

import redis
import redis.asyncio as aioredis

from hivemind_cluster.core.audit import HUB_ADMIN, LOCAL, AsyncAuditLog, AuditLog, Event
from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.core.names import HUB_CONFIG
from hivemind_cluster.mesh import constants, nodes
from hivemind_cluster.mesh.metrics import ENROLLMENT_ATTEMPTS, outcome_of
from hivemind_cluster.mesh.policy import Policy

_TOKEN_ID = re.compile(r"^[0-9a-f]{12}$")
REFUSALS_RECORDED = 20  # refused enrollments recorded per source address and minute


def token_target(token_id: str) -> str:
    return f"token:{token_id}" if _TOKEN_ID.match(token_id) else "token:(malformed)"


def enrollment(
    client: redis.Redis,
    token_id: str,
    source: str,
    accepted: tuple[str, str] | None,
    error: BaseException | None = None,
) -> None:
    """One enrollment attempt, counted by outcome and written as one audit entry:
    ``accepted`` is (node id, what it became), None if it was refused with ``error``."""
    outcome = outcome_of(error)
    ENROLLMENT_ATTEMPTS.labels(outcome=outcome).inc()
    target = token_target(token_id)
    if accepted is not None and error is None:
        node_id, detail = accepted
        event = Event(f"node:{node_id}", source, "enrollment.accept", target, detail=detail)
    else:
        reason = error.message if isinstance(error, HiveMindError) else "internal error"
        refused = refusals_this_minute(client, source)
        if refused > REFUSALS_RECORDED + 1:
            return
        if refused == REFUSALS_RECORDED + 1:
            reason = f"over {REFUSALS_RECORDED} refused this minute: the rest are only counted"
        event = Event("unknown", source, "enrollment.refuse", target, outcome, reason)
    AuditLog(client).record(event)


def refusals_this_minute(client: redis.Redis, source: str) -> int:
    """This refusal's number among the source's this minute (0: Redis did not say)."""
    key = constants.REFUSALS.format(source=source[:64])
    try:
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.expire(key, 60, nx=True)
        count, _ = pipe.execute()
    except redis.RedisError:
        return 0  # the audit entry fails the same way, and is logged there
    return int(count)


def node_left(client: redis.Redis, node: nodes.Node, source: str) -> None:
    AuditLog(client).record(
        Event(
            f"node:{node.id}",
            source,
            "node.leave",
            f"node:{node.id}",
            detail=f"{node.name} ({node.role}, {node.overlay_ip})",
        )
    )


def node_revoked(client: redis.Redis, node: nodes.Node, actor: str, source: str) -> None:
    AuditLog(client).record(
        Event(
            actor,
            source,
            "node.revoke",
            f"node:{node.id}",
            detail=f"{node.name} ({node.role}, {node.overlay_ip})",
        )
    )


def policy_event(policy: Policy, error: str) -> Event:
    """hub.toml's policy refused (``error``), or ``policy`` now running."""
    if error:
        return Event(HUB_ADMIN, LOCAL, "policy.refuse", HUB_CONFIG, "refused", error)
    detail = f"digest {policy.digest()[:12]}, {len(policy.rules)} rules from {policy.source}"
    return Event(HUB_ADMIN, LOCAL, "policy.change", HUB_CONFIG, detail=detail)


async def policy_changed(db: aioredis.Redis, policy: Policy, error: str = "") -> None:
    await AsyncAuditLog(db).record(policy_event(policy, error))


async def policy_started(db: aioredis.Redis, policy: Policy, error: str) -> None:
    """At start: a refusal, or a policy other than the one the hub ran last (the first)."""
    last_digest = await db.hget(constants.POLICY, "digest")
    if error or last_digest != policy.digest():
        await policy_changed(db, policy, error)
