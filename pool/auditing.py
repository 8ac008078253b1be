"""What the pool writes to the hub's audit log (core/audit.py): tasks submitted and
cancelled, tips. Every way in (the web's API and pages, ``hivemind-pool``) reaches the
pool through ``Tasks``, so each action is recorded here once.

The actor is the account the call acts for: ``user:alice`` when the hub's web acts for
her, ``node:<id>`` for an operator node, ``hub-admin`` for the hub acting for itself. The
source is the caller's overlay address, except that the hub's web names its user's
browser in the call's metadata (``SOURCE_ADDRESS_METADATA``): believed of the hub's own
certificate only, since any other caller could name any address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from typing import Any

import grpc
import redis.asyncio as aioredis

from hivemind_cluster.client.grpcclient import SOURCE_ADDRESS_METADATA
from hivemind_cluster.core.audit import HUB_ADMIN, AsyncAuditLog, Event
from hivemind_cluster.pool.auth import Caller, current_caller

Context = grpc.aio.ServicerContext[Any, Any]


def actor_of(caller: Caller, account: str) -> str:
    """Who acts: the account acted for, or the calling node itself."""
    if account and account != caller.node_id:
        return account
    return HUB_ADMIN if caller.role == "hub" else f"node:{caller.node_id}"


def source_of(caller: Caller, context: Context) -> str:
    """The browser's address for the hub's web (a well-formed IP only), else the caller's."""
    if caller.role == "hub":
        for key, value in context.invocation_metadata() or ():
            if key == SOURCE_ADDRESS_METADATA and isinstance(value, str):
                try:
                    return str(ipaddress.ip_address(value))
                except ValueError:
                    break
    return caller.overlay_ip


async def record(
    db: aioredis.Redis, context: Context, account: str, action: str, target: str, detail: str
) -> None:
    """One entry for an action the current caller did for ``account`` (see the module)."""
    caller = current_caller()
    event = Event(actor_of(caller, account), source_of(caller, context), action, target, "ok")
    # Shielded: a caller gone once the action is done must not take its entry with it.
    await asyncio.shield(AsyncAuditLog(db).record(dataclasses.replace(event, detail=detail)))
