"""The hub's running policy: read from hub.toml, watched, recorded in Redis (``POLICY``).

A policy hub.toml gets wrong never replaces the running one: the error (with its line) is
logged and recorded next to it, so ``hivemind-hub policy show`` can say so. At start the
hub runs hub.toml's; if that is refused, the one it ran last (from Redis); with neither,
it does not start. hub.toml is read only once it holds still: the same stamp at two looks
a poll apart, and again right after it was read (an editor half-way through writing it
never has its half applied).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import audits, constants
from hivemind_cluster.mesh.policy import Policy, load_policy
from hivemind_cluster.protos import mesh_pb2

log = logging.getLogger(__name__)
Stamp = tuple[int, int, int] | None
SETTLE_TRIES = 20  # at start: reads of a hub.toml that keeps changing before using the last
SETTLE_PAUSE = 0.1  # seconds between two of them


class PolicyFile:
    """hub.toml's policy as the hub follows it."""

    def __init__(self, settings: HubSettings, db: aioredis.Redis, path: Path) -> None:
        self.settings = settings
        self.db = db
        self.path = path
        self.stamp: Stamp = None  # of the file last read (run or refused)
        self.seen: Stamp = None  # at the last look

    async def read(self, last_try: bool = False) -> Policy | None:
        """hub.toml's policy; None if the file changed while it was read (a writer is at
        it: the caller tries again), unless ``last_try``. InvalidInput if it is refused."""
        before = file_stamp(self.path)
        ports = self.settings.pool_port, self.settings.web_port, self.settings.metrics_port
        try:
            policy = await asyncio.to_thread(load_policy, self.path, *ports)
        except InvalidInput:
            if not self.settled(before, last_try):
                return None
            raise
        return policy if self.settled(before, last_try) else None

    def settled(self, before: Stamp, last_try: bool) -> bool:
        """Was the file the same after reading it as before? Noted as read if so."""
        self.seen = file_stamp(self.path)
        if self.seen != before and not last_try:
            return False
        self.stamp = before
        return True

    async def initial(self) -> Policy:
        """The policy to start with, recorded as running."""
        try:
            policy, error = await self.settled_read(), ""
        except InvalidInput as exc:
            try:
                recorded = await running_policy(self.db)
                last = policy_of_record(recorded) if recorded is not None else None
            except InvalidInput as corrupt:
                raise InvalidInput(f"{exc.message} (and {corrupt.message})") from None
            if last is None:
                raise
            log.error("policy refused, the one the hub ran last runs: %s", exc.message)
            policy, error = last, exc.message
        await audits.policy_started(self.db, policy, error)
        await self.record(policy, error)
        return policy

    async def settled_read(self) -> Policy:
        for attempt in range(SETTLE_TRIES):
            if (policy := await self.read(last_try=attempt == SETTLE_TRIES - 1)) is not None:
                return policy
            await asyncio.sleep(SETTLE_PAUSE)
        raise AssertionError("unreachable: the last try always reads")

    async def changed(self, running: Policy) -> Policy | None:
        """hub.toml's new policy if the file changed, holds still, and its policy differs
        from ``running``; None otherwise (also when refused: then the error is recorded)."""
        stamp = file_stamp(self.path)
        previous_look, self.seen = self.seen, stamp
        if stamp == self.stamp or stamp != previous_look:  # unchanged, or not settled yet
            return None
        try:
            if (policy := await self.read()) is None:
                return None
        except InvalidInput as exc:
            log.error("policy refused, the running one stays: %s", exc.message)
            await self.db.hset(
                constants.POLICY, mapping={"error": exc.message, "error_at": time.time()}
            )
            await audits.policy_changed(self.db, running, exc.message)
            return None
        await self.record(policy)
        if policy.digest() == running.digest():
            return None
        log.info("policy from %s now running (%s)", policy.source, policy.digest()[:12])
        await audits.policy_changed(self.db, policy)
        return policy

    async def record(self, policy: Policy, error: str = "") -> None:
        """``POLICY``: the running policy, and hub.toml's error ("" if it was read fine)."""
        record: dict[FieldT, EncodableT] = {
            "digest": policy.digest(),
            "source": policy.source,
            "rules": json.dumps([rule.as_json() for rule in policy.rules]),
            "applied_at": time.time(),
            "error": error,
            "error_at": time.time() if error else "",
        }
        await self.db.hset(constants.POLICY, mapping=record)


def file_stamp(path: Path) -> Stamp:
    """What tells a changed file from an unchanged one (None: there is none)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


def policy_record(raw: Mapping[str, str]) -> dict[str, Any] | None:
    """``POLICY`` as ``policy show`` prints it (None: no hub has recorded one)."""
    if not raw.get("digest"):
        return None
    try:
        return {
            "digest": raw["digest"],
            "source": raw.get("source", ""),
            "rules": json.loads(raw.get("rules") or "[]"),
            "applied_at": float(raw.get("applied_at") or 0),
            "error": raw.get("error", ""),
            "error_at": float(raw["error_at"]) if raw.get("error_at") else None,
        }
    except ValueError as exc:  # json.JSONDecodeError is one
        raise corrupt_record(exc) from None


def policy_of_record(recorded: Mapping[str, Any]) -> Policy:
    """The policy ``running_policy`` returned, checked again as a member would.
    InvalidInput (one line) if the record is corrupt."""
    try:
        rules = list(recorded["rules"])
        message = mesh_pb2.Policy(
            digest=recorded["digest"],
            rules=[
                mesh_pb2.PolicyRule(
                    sources=r["sources"], destinations=r["destinations"], ports=r["ports"]
                )
                for r in rules
            ],
        )
        policy = Policy.from_proto(message)
        lines = [
            dataclasses.replace(rule, line=int(r["line"]))
            for rule, r in zip(policy.rules, rules, strict=True)
        ]
        return dataclasses.replace(policy, rules=tuple(lines), source=str(recorded["source"]))
    except InvalidInput as exc:
        raise corrupt_record(exc.message) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise corrupt_record(exc) from None


def corrupt_record(reason: object) -> InvalidInput:
    what = f"missing {reason}" if isinstance(reason, KeyError) else str(reason)
    return InvalidInput(
        f"the policy recorded in Redis ({constants.POLICY}) is corrupt ({what}); "
        "a hub records it again when it starts or hub.toml changes"
    )


async def running_policy(db: aioredis.Redis) -> dict[str, Any] | None:
    """The policy the hub runs, and the error of hub.toml's if it is refused right now."""
    raw: dict[str, str] = await db.hgetall(constants.POLICY)  # type: ignore[assignment]
    return policy_record(raw)


def running_policy_now(client: redis.Redis) -> dict[str, Any] | None:
    """``running_policy`` over a synchronous client (the command line's)."""
    raw: dict[str, str] = client.hgetall(constants.POLICY)  # type: ignore[assignment]
    return policy_record(raw)
