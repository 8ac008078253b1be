"""The hub's peer distributor: every member's view of the mesh, kept current and streamed.

The hub holds one record per active member (``Member``: who it is, and the endpoints it
may be reached at: the one the hub's WireGuard sees, then the ones it reports). Each
record is the same whoever looks at it, so a change costs one record and one log entry,
not one per member: every change bumps ``revision`` and notes in a change log which nodes
(or the policy) it touched. A ``Subscription`` (one per ``Mesh/Peers`` stream) remembers
the revision it last sent and sends, in one update, the latest record of everything the
log touched since: changes are coalesced (latest wins) and never dropped. When the log
was trimmed past it, it sends the full set again. One stream per node: a newer one ends
the older (a member cannot multiply its streams), and a member's endpoint changes are
spaced out (``EndpointTurns``): one member cannot make every stream wake at every report.

What changes the records: ``MESH_CHANGED`` messages (joins, revocations, departures),
the hub's ``wg show dump`` (polled), members' reports, hub.toml's policy (polled), and a
full reconcile from Redis every few seconds in case a message was lost. The member
records and the checks on what members send are in mesh/peermembers.py, the path reports
kept for ``hivemind-hub nodes`` in mesh/pathreports.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from hivemind_cluster.core.errors import Conflict, HiveMindError, InvalidInput, Unavailable
from hivemind_cluster.core.names import HUB_NODE_ID
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.mesh import constants, pathreports, policyrules
from hivemind_cluster.mesh.inventory import hub_name
from hivemind_cluster.mesh.pathreports import reported_paths
from hivemind_cluster.mesh.peermembers import (
    RECORD_FIELDS,
    EndpointTurns,
    Member,
    capped,
    checked_endpoints,
    member_of_record,
    parties_differ,
    shown,
)
from hivemind_cluster.mesh.peerpolicy import PolicyFile, running_policy, running_policy_now
from hivemind_cluster.mesh.policy import Party, Policy, default_policy
from hivemind_cluster.mesh.wireguard import WireGuardInterface
from hivemind_cluster.protos import mesh_pb2

log = logging.getLogger(__name__)
__all__ = ["PeerDistributor", "Subscription", "reported_paths", "running_policy"]
__all__ += ["running_policy_now"]

WIREGUARD_POLL = 0.5  # seconds between two reads of the hub's endpoints
POLICY_POLL = 1.0  # seconds between two looks at hub.toml
RECONCILE_INTERVAL = 5.0  # seconds between two full reads of the members from Redis
PATHS_INTERVAL = 1.0  # a member's path report is written at most this often
LOG_ENTRIES = 4096  # change log entries kept; a subscription further behind gets a full set
FIREWALL_RETRY = 1.0  # seconds before a failed load of the hub's policy rules is tried again
POLICY_CHANGE = ""  # the change log's node id for "the policy changed"


class PeerDistributor:
    """The members, the policy and the change log, kept current from every source."""

    def __init__(
        self,
        settings: HubSettings,
        db: aioredis.Redis,
        interface: WireGuardInterface | None,
        policy_path: Path,
        apply_hub_rules: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.interface = interface
        self.apply_hub_rules = apply_hub_rules
        self.hub = Party(HUB_NODE_ID, hub_name(settings), "hub", settings.hub_ip)
        self.revision = 0
        self.members: dict[str, Member] = {}
        self.policy = default_policy(  # until start
            settings.pool_port, settings.web_port, settings.metrics_port
        )
        self.policy_message = self.policy.to_proto()
        self.protos: dict[str, mesh_pb2.MeshPeer] = {}  # node id -> its record, built once
        self.by_key: dict[str, Member] = {}
        self.log: deque[tuple[int, str, str]] = deque()  # revision, node id, its key
        self.floor = 0  # every change after this revision is still in the log
        self.observed: dict[str, str] = {}  # public key -> endpoint the hub sees
        self.reported: dict[str, tuple[str, ...]] = {}  # node id -> its own candidates
        self.turns = EndpointTurns(self.set_reported)
        self.refused: dict[str, tuple[str, ...]] = {}  # node id -> its refused ones (logged)
        self.malformed: dict[str, str] = {}  # node id -> why its record is unusable (logged)
        self.subscriptions: dict[str, Subscription] = {}  # node id -> its one stream
        self.stopped = False
        self.policy_file = PolicyFile(settings, db, policy_path)
        self.paths_pending: dict[str, mesh_pb2.MemberReport] = {}  # written every second
        self.firewall_due = asyncio.Event()
        self.firewall_text = ""
        self.tasks: list[asyncio.Task[None]] = []

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Members from Redis, the hub's rules in place, then every source watched."""
        self.policy = await self.policy_file.initial()
        self.policy_message = self.policy.to_proto()
        await self.reload(None)
        await self.apply_firewall()  # before anyone may connect: errors stop the hub
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("mesh-changes", self.follow_changes),
            ("policy-file", self.watch_policy),
            ("reconcile", self.reconcile),
            ("hub-rules", self.keep_firewall),
            ("paths", self.write_paths),
        ]
        if self.interface is not None:
            loops.append(("hub-endpoints", self.watch_endpoints))
        self.tasks = [asyncio.create_task(run(), name=name) for name, run in loops]

    async def stop(self) -> None:
        self.stopped = True
        self.turns.close()
        self.wake()
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def subscribe(self, node_id: str) -> Subscription:
        """The node's stream; the one it had before ends (``replaced``)."""
        if (older := self.subscriptions.get(node_id)) is not None:
            older.replaced = True
            older.close()
        subscription = self.subscriptions[node_id] = Subscription(self, node_id)
        return subscription

    # -- changes --------------------------------------------------------------------------

    def update(self, changes: Mapping[str, Member | None], policy: Policy | None = None) -> None:
        """Apply the members' new records (None: no longer a member) and the new policy as
        one revision, if anything differs."""
        touched = [(i, m) for i, m in changes.items() if self.members.get(i) != m]
        if not touched and policy is None:
            return
        self.revision += 1
        if policy is not None or any(parties_differ(self.members.get(i), m) for i, m in touched):
            self.firewall_due.set()
        for node_id, member in touched:
            old = self.members.pop(node_id, None)
            self.protos.pop(node_id, None)
            if old is not None:
                self.by_key.pop(old.public_key, None)
            if member is None:
                self.forget(node_id)
            else:
                self.members[node_id] = member
                self.protos[node_id] = member.to_proto()
                self.by_key[member.public_key] = member
            key = member.public_key if member else old.public_key if old else ""
            self.log.append((self.revision, node_id, key))
        if policy is not None:
            self.policy, self.policy_message = policy, policy.to_proto()
            self.log.append((self.revision, POLICY_CHANGE, ""))
        while len(self.log) > LOG_ENTRIES:  # a subscription still before these: full set
            self.floor = self.log.popleft()[0]
        self.wake()

    def wake(self) -> None:
        for subscription in self.subscriptions.values():
            subscription.wakeup.set()

    def forget(self, node_id: str) -> None:
        """What the hub kept of a node that is no longer a member."""
        self.reported.pop(node_id, None)
        self.refused.pop(node_id, None)
        self.turns.forget(node_id)

    def member_of(self, node_id: str, row: list[str | None] | Exception) -> Member | None:
        """The member a node hash (its RECORD_FIELDS, in order) describes, None unless active. A
        corrupt one is logged (once) and its node left out: the others are not held up."""
        try:
            if isinstance(row, Exception):  # not a hash at all, say
                raise InvalidInput(f"node {node_id}'s record cannot be read: {row}")
            record = dict(zip(RECORD_FIELDS, row, strict=True))
            key = record.get("wg_public_key") or ""
            observed, reported = self.observed.get(key, ""), self.reported.get(node_id, ())
            member = member_of_record(record, observed, reported)
        except (InvalidInput, ValueError, TypeError, AttributeError, KeyError) as exc:
            error = exc.message if isinstance(exc, InvalidInput) else f"node {node_id}: {exc!r}"
            if self.malformed.get(node_id) != error:
                log.error("%s; the node is left out of the mesh until it is fixed", error)
            self.malformed[node_id] = error
            return None
        self.malformed.pop(node_id, None)
        return member

    async def reload(self, node_ids: Iterable[str] | None) -> None:
        """Read these nodes (None: every node) from Redis and apply what changed."""
        everyone = node_ids is None
        if node_ids is None:
            ids: list[str] = await self.db.zrange(constants.NODES, 0, -1)  # type: ignore[assignment]
        else:
            ids = list(dict.fromkeys(node_ids))
        pipe = self.db.pipeline(transaction=False)
        for node_id in ids:
            pipe.hmget(constants.NODE.format(id=node_id), RECORD_FIELDS)
        rows = await pipe.execute(raise_on_error=False) if ids else []
        changes: dict[str, Member | None] = {}
        if everyone:
            changes = dict.fromkeys(self.members)  # a member Redis no longer lists is gone
        for node_id, row in zip(ids, rows, strict=True):
            changes[node_id] = self.member_of(node_id, row)
        self.update(changes)

    async def follow_changes(self) -> None:
        """``MESH_CHANGED`` as it comes (a burst read at once: one revision), subscribed
        again after Redis went away, with a full reload for what was missed meanwhile."""
        while True:
            try:
                async with self.db.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(constants.MESH_CHANGED)
                    await self.reload(None)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        hints: list[str | None] = []
                        while message is not None and len(hints) < 1000:
                            hints.append(hinted_node(message))
                            message = await pubsub.get_message(timeout=0)
                        named = [hint for hint in hints if hint is not None]
                        if hints:
                            await self.reload(named if len(named) == len(hints) else None)
            except (redis.RedisError, OSError) as exc:
                log.warning("mesh changes: %s; subscribing again", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("following the mesh's changes failed; subscribing again")
                await asyncio.sleep(1.0)

    async def reconcile(self) -> None:
        """The safety net: every RECONCILE_INTERVAL, every member read again."""
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            with logged_failure("reconciling the members"):
                await self.reload(None)

    async def watch_endpoints(self) -> None:
        """The endpoint the hub sees for each member (its NAT's mapping, say)."""
        assert self.interface is not None
        interface = self.interface
        while True:
            with logged_failure(f"reading {interface.name}"):
                seen = {p.public_key: p.endpoint for p in await asyncio.to_thread(interface.peers)}
                if seen != self.observed:
                    self.observed = seen
                    self.update(
                        {
                            m.node_id: dataclasses.replace(m, observed=seen.get(m.public_key, ""))
                            for m in self.members.values()
                        }
                    )
            await asyncio.sleep(WIREGUARD_POLL)

    # -- reports --------------------------------------------------------------------------

    async def report(self, node_id: str, report: mesh_pb2.MemberReport) -> None:
        """A member's report (cut to size first): its own endpoints (to the others, when
        their turn comes), its paths (to Redis by ``write_paths``, the latest of each)."""
        capped(report, len(self.members))
        endpoints, refused = checked_endpoints(report.endpoints, self.settings.network)
        if refused and refused != self.refused.get(node_id):
            texts = ", ".join(shown(text) for text in refused[:4])
            log.warning("node %s reported endpoints that are not handed out: %s", node_id, texts)
        self.refused[node_id] = refused
        self.turns.offer(node_id, endpoints, self.reported.get(node_id, ()))
        self.paths_pending[node_id] = report

    def set_reported(self, node_id: str, endpoints: tuple[str, ...]) -> bool:
        """A member's own endpoints, now (``EndpointTurns`` says when); False if unchanged."""
        if endpoints == self.reported.get(node_id, ()):
            return False
        self.reported[node_id] = endpoints
        if (member := self.members.get(node_id)) is not None:
            self.update({node_id: dataclasses.replace(member, reported=endpoints)})
        return True

    async def write_paths(self) -> None:
        """Every PATHS_INTERVAL, the latest report of each member that sent one, all in one
        pipeline (one round trip and one connection, whatever the number of members)."""
        while True:
            await asyncio.sleep(PATHS_INTERVAL)
            pending, self.paths_pending = self.paths_pending, {}
            if not pending:
                continue
            ids_by_key = {m.public_key: i for i, m in self.members.items()}
            with logged_failure(f"recording the paths of {len(pending)} members"):
                values = await asyncio.to_thread(
                    pathreports.encoded_records, pending, ids_by_key, self.settings.network
                )
                pipe = self.db.pipeline(transaction=False)
                for node_id, value in values.items():
                    pipe.set(constants.PATHS.format(id=node_id), value, ex=constants.PATHS_TTL)
                await pipe.execute()

    # -- policy ---------------------------------------------------------------------------

    async def watch_policy(self) -> None:
        """hub.toml looked at every POLICY_POLL: a new valid policy runs at once."""
        while True:
            await asyncio.sleep(POLICY_POLL)
            with logged_failure("reading the policy"):
                if (policy := await self.policy_file.changed(self.policy)) is not None:
                    self.update({}, policy)

    async def apply_firewall(self) -> None:
        """The hub's policy table for the running policy and members, when its text changed
        (rendered and loaded in a thread: nft takes a while with many members)."""
        if self.apply_hub_rules is None:
            return
        apply, interface = self.apply_hub_rules, self.settings.interface
        policy, parties = self.policy, [m.party() for m in self.members.values()]
        text = await asyncio.to_thread(
            policyrules.hub_ruleset, interface, policy, self.hub, parties
        )
        if text != self.firewall_text:
            await asyncio.to_thread(apply, text)
            self.firewall_text = text

    async def keep_firewall(self) -> None:
        """The rules loaded at every change; a failed load is tried again every
        FIREWALL_RETRY (not only at the next change), logged once per distinct error."""
        failing = ""
        while True:
            await self.firewall_due.wait()
            self.firewall_due.clear()  # changes from now on need another pass
            try:
                await self.apply_firewall()
            except Exception as exc:
                error = exc.message if isinstance(exc, HiveMindError) else repr(exc)
                if error != failing:
                    log.error("loading the hub's policy rules failed, trying again: %s", error)
                failing = error
                await asyncio.sleep(FIREWALL_RETRY)
                self.firewall_due.set()
                continue
            if failing:
                log.info("the hub's policy rules are loaded")
            failing = ""


class Subscription:
    """One member's stream: the full set first, then what changed since the last update."""

    def __init__(self, distributor: PeerDistributor, node_id: str) -> None:
        self.distributor = distributor
        self.node_id = node_id
        self.sent = -1  # the revision of the last update sent (-1: none yet)
        self.closed = False
        self.replaced = False  # closed because the node opened another stream
        self.wakeup = asyncio.Event()  # set at every new revision, and at close

    async def next_update(self) -> mesh_pb2.PeerUpdate | None:
        """The next update, once there is one; None once the node is no longer an active
        member (the stream ends). Unavailable when the hub stops, Conflict when the node
        opened another stream."""
        hub = self.distributor
        if self.sent < 0 and self.node_id not in hub.members:
            await hub.reload([self.node_id])  # enrolled a moment ago: not heard of yet
        while self.sent == hub.revision and not (self.closed or hub.stopped):
            await self.wakeup.wait()
            self.wakeup.clear()
        if hub.stopped:
            raise Unavailable("the hub is stopping")
        if self.replaced:
            raise Conflict(f"node {self.node_id} opened another peer stream: this one ends")
        if self.closed or self.node_id not in hub.members:
            return None
        full = self.sent < hub.floor
        update = self.full() if full else self.delta()
        self.sent = hub.revision
        return update

    def full(self) -> mesh_pb2.PeerUpdate:
        hub = self.distributor
        update = mesh_pb2.PeerUpdate(
            revision=hub.revision,
            full=True,
            policy=hub.policy_message,
            self=hub.protos[self.node_id],
            keepalive=hub.settings.persistent_keepalive,
        )
        update.peers.extend(p for i, p in hub.protos.items() if i != self.node_id)
        return update

    def delta(self) -> mesh_pb2.PeerUpdate:
        """Everything the log touched since ``sent``, each at its latest."""
        hub = self.distributor
        touched: dict[str, str] = {}
        for revision, node_id, key in reversed(hub.log):
            if revision <= self.sent:
                break
            touched.setdefault(node_id, key)
        update = mesh_pb2.PeerUpdate(
            revision=hub.revision, keepalive=hub.settings.persistent_keepalive
        )
        for node_id, key in touched.items():
            if node_id == POLICY_CHANGE:
                update.policy.CopyFrom(hub.policy_message)
            elif node_id == self.node_id:
                update.self.CopyFrom(hub.protos[node_id])
            elif node_id in hub.protos:
                update.peers.append(hub.protos[node_id])
            else:
                update.removed.append(key)
        return update

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()
        if self.distributor.subscriptions.get(self.node_id) is self:
            del self.distributor.subscriptions[self.node_id]


def hinted_node(message: Mapping[str, Any]) -> str | None:
    """The node a ``MESH_CHANGED`` message names (None: not known, read every node)."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        node_id = json.loads(message["data"]).get("node_id")
        if isinstance(node_id, str) and node_id:
            return node_id
    return None


@contextlib.contextmanager
def logged_failure(what: str) -> Any:
    """A failure of one pass of a loop is logged; the loop goes on."""
    try:
        yield
    except (HiveMindError, redis.RedisError, OSError) as exc:
        log.warning("%s failed: %s", what, exc)
    except Exception:
        log.exception("%s failed", what)
