"""The agent's local status page: ``http://127.0.0.1:5000/`` (HTML) and ``/status.json``.

What someone at the machine (or a script) wants to know without the hub: which node this
is, whether the overlay is up (the hub peer's last handshake and traffic), the other
peers and whether each goes direct or through the hub (agent/peerview.py), whether the
worker's stream to the pool is connected, what runs now and what ran lately, and what the
node has earned. The HTML is rendered from the JSON document, so both always agree.

The stdlib ``ThreadingHTTPServer`` in a daemon thread serves it (agent/statusserver.py):
one small read-only page does not justify a web framework on every agent. It binds
loopback by default and refuses
requests whose ``Host`` is a DNS name other than ``localhost``, so a web site cannot read
it through DNS rebinding. The HTML refreshes itself with a meta tag (no JavaScript) and
every value in it is escaped.

Ledger figures come from the pool (``Tasks.Balance`` and ``Tasks.History`` with the node's
own certificate), cached for a few seconds so a page left open does not keep asking the
hub; when the pool cannot answer, the page says "unavailable" and shows everything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from hivemind_cluster.agent.attempts import SUPERSEDED, WorkerSnapshot
from hivemind_cluster.agent.peerview import (
    PeerRow,
    hub_status,
    interface_peers,
    known_peers,
    peer_rows,
)
from hivemind_cluster.agent.state import Enrollment
from hivemind_cluster.agent.worker import Worker
from hivemind_cluster.client.channel import Identity, sync_channel
from hivemind_cluster.core.grpcutil import error_from_rpc
from hivemind_cluster.core.units import format_cpt
from hivemind_cluster.mesh.wireguard import PeerStatus
from hivemind_cluster.model.accounts import PAYMENT_PREFIX
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

log = logging.getLogger("hivemind.agent.status")
DEFAULT_PORT = 5000
LEDGER_TTL = 5.0
RPC_TIMEOUT = 3.0
# Movements read for the per-task payments of the recent tasks (the last 20 of them).
HISTORY_LIMIT = 200


@dataclass(frozen=True)
class Overlay:
    interface: str
    up: bool
    hub_endpoint: str
    last_handshake: float | None  # unix seconds
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class LedgerView:
    """The node's account: ``earned`` is all it was ever paid for tasks (the ledger keeps
    the sum), ``payments`` what each of its recent tasks earned."""

    available: bool
    error: str = ""
    fetched_at: float | None = None
    account: str = ""
    kind: str = ""
    balance: int = 0
    earned: int = 0
    payments: Mapping[str, int] = field(default_factory=dict)  # task -> micro-CPT


@dataclass(frozen=True)
class Status:
    generated_at: float
    enrollment: Enrollment
    overlay: Overlay
    worker: WorkerSnapshot | None  # None: not a worker (an operator runs no tasks)
    ledger: LedgerView
    peers: tuple[PeerRow, ...] = ()  # the other members, by name


class Source(Protocol):
    """What the server serves: ``StatusPage``, or a fixed status in tests."""

    def status(self) -> Status: ...

    def close(self) -> None: ...


# ---- collecting -----------------------------------------------------------------------


def overlay_state(enrollment: Enrollment, wireguard: list[PeerStatus] | None) -> Overlay:
    """The hub peer as WireGuard reports it (``wireguard``: its peers, None when down)."""
    peer = hub_status(wireguard, enrollment.hub_public_key)
    return Overlay(
        interface=enrollment.interface,
        up=peer is not None,
        hub_endpoint=(peer.endpoint if peer else "") or enrollment.hub_endpoint,
        last_handshake=float(peer.latest_handshake) if peer and peer.latest_handshake else None,
        rx_bytes=peer.rx_bytes if peer else 0,
        tx_bytes=peer.tx_bytes if peer else 0,
    )


def fetch_ledger(channel: grpc.Channel, timeout: float = RPC_TIMEOUT) -> LedgerView:
    """The caller's own balance and earnings, or why the pool could not say."""
    stub = pb_grpc.TasksStub(channel)
    try:
        balance = stub.Balance(pb.AccountRef(), timeout=timeout)
        history = stub.History(pb.HistoryRequest(limit=HISTORY_LIMIT), timeout=timeout)
    except grpc.RpcError as exc:
        message = error_from_rpc(exc, "the pool").message
        return LedgerView(available=False, error=message, fetched_at=time.time())
    account = balance.account
    payments = {
        e.task: e.amount
        for e in history.entries
        if e.target == account and e.idempotency_key.startswith(PAYMENT_PREFIX)
    }
    return LedgerView(
        available=True,
        fetched_at=time.time(),
        account=account,
        kind=balance.kind,
        balance=balance.balance,
        earned=balance.earned,
        payments=payments,
    )


class StatusPage:
    """Collects a ``Status`` on request: enrollment and worker state are local and cheap,
    the overlay is one ``wg show``, the ledger two RPCs made at most every ``ledger_ttl``
    (in the background)."""

    def __init__(
        self,
        enrollment: Enrollment,
        identity: Identity,
        worker: Worker | None,
        ledger_ttl: float = LEDGER_TTL,
        state_dir: Path | None = None,
    ) -> None:
        self.enrollment = enrollment
        self.worker = worker
        self.state_dir = state_dir  # its peers.json names the peers (None: no peers shown)
        self.ledger_ttl = ledger_ttl
        self._channel = sync_channel(identity)
        self._lock = threading.Lock()
        self._ledger: LedgerView | None = None
        self._ledger_at = 0.0  # monotonic
        self._fetching = False

    def status(self) -> Status:
        wireguard = interface_peers(self.enrollment.interface)  # one `wg show` for both
        known = known_peers(self.state_dir) if self.state_dir is not None else {}
        return Status(
            generated_at=time.time(),
            enrollment=self.enrollment,
            overlay=overlay_state(self.enrollment, wireguard),
            worker=self.worker.snapshot() if self.worker is not None else None,
            ledger=self.ledger(),
            peers=tuple(peer_rows(known, wireguard)),
        )

    def ledger(self) -> LedgerView:
        """The cached figures. Only the very first request waits for the pool; after that a
        stale cache is refreshed in the background (one fetch at a time), so a silent hub
        never holds up the page — it is what someone looks at when the hub is in trouble."""
        with self._lock:
            if self._ledger is None:
                self._refresh()
            elif time.monotonic() - self._ledger_at >= self.ledger_ttl and not self._fetching:
                self._fetching = True
                threading.Thread(target=self._refresh_in_background, daemon=True).start()
            assert self._ledger is not None
            return self._ledger

    def _refresh(self) -> None:
        self._ledger = fetch_ledger(self._channel)
        self._ledger_at = time.monotonic()

    def _refresh_in_background(self) -> None:
        try:
            fresh = fetch_ledger(self._channel)
            with self._lock:
                self._ledger, self._ledger_at = fresh, time.monotonic()
        finally:
            with self._lock:
                self._fetching = False

    def close(self) -> None:
        self._channel.close()


# ---- the document ---------------------------------------------------------------------


def status_json(status: Status) -> dict[str, Any]:
    """The JSON document (``/status.json``); amounts in micro-CPT and as CPT text."""
    node = status.enrollment
    return {
        "generated_at": status.generated_at,
        "node": {
            "id": node.node_id,
            "name": node.name,
            "role": node.role,
            "overlay_ip": node.overlay_ip,
        },
        "overlay": asdict(status.overlay),  # its fields are the document's keys
        "hub": hub_json(node, status.worker),
        "tasks": tasks_json(status.worker, status.ledger),
        "ledger": ledger_json(status.ledger),
        "peers": [row.to_json() for row in status.peers],
    }


def money(name: str, micro: int | None) -> dict[str, Any]:
    """``{name}_micro`` exact, ``{name}_cpt`` as text; both null when unknown."""
    text = None if micro is None else format_cpt(micro)
    return {f"{name}_micro": micro, f"{name}_cpt": text}


def hub_json(node: Enrollment, worker: WorkerSnapshot | None) -> dict[str, Any]:
    return {
        "ip": node.hub_ip,
        "pool_address": node.pool_address,
        # The worker's stream to the pool; None on a node that has none (an operator).
        "connected": worker.connected if worker else None,
        "since": worker.since if worker else None,
        "last_received": worker.last_received if worker else None,
        "last_sent": worker.last_sent if worker else None,
        "draining": worker.draining if worker else False,
    }


def tasks_json(worker: WorkerSnapshot | None, ledger: LedgerView) -> dict[str, Any]:
    """What runs now and what ran lately, each recent task with what it earned."""
    return {
        "running": [
            {
                "task_id": a.task_id,
                "attempt": a.attempt,
                "image": a.image,
                "started_at": a.started_at,
            }
            for a in (worker.running if worker else ())
        ],
        "recent": [
            {
                "task_id": a.task_id,
                "attempt": a.attempt,
                "status": a.status,
                "exit_code": a.exit_code,
                "ended_at": a.ended_at,
                # A superseded attempt earned nothing (a payment is another attempt's).
                **money(
                    "earned", None if a.status == SUPERSEDED else ledger.payments.get(a.task_id)
                ),
            }
            for a in (worker.recent if worker else ())
        ],
        "completed": worker.completed if worker else 0,
    }


def ledger_json(ledger: LedgerView) -> dict[str, Any]:
    return {
        "available": ledger.available,
        "error": ledger.error,
        "fetched_at": ledger.fetched_at,
        "account": ledger.account,
        "kind": ledger.kind,
        **money("balance", ledger.balance if ledger.available else None),
        **money("earned", ledger.earned if ledger.available else None),
    }
