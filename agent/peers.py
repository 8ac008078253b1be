"""The agent's live view of the mesh: the hub's peer stream, applied to WireGuard and nftables.

Every member's service (worker or operator) holds one ``Mesh/Peers`` stream to the hub over
the overlay. The hub sends the full peer set when the stream opens and what changed after;
``PeerSync`` applies each update to the ``PathKeeper`` (agent/paths.py: which peers exist
and whether each goes direct or through the hub), then to the member firewall (the overlay
policy, agent/memberfw.py), then acks the revision with a report that also carries this
host's endpoint candidates and the path to each peer (every 2 s, and at once when a path
changed).

Direct paths bypass the hub's forwarding filter, so the keeper allows them only while the
member firewall is loaded: when nft is missing or refuses the ruleset, every peer goes
through the hub (which enforces the policy) until a load succeeds.

Threads: the stream runs on an asyncio loop in a thread of its own ("peer-sync"). Every
call on the keeper and the firewall runs on one more thread ("path-keeper"): the tick every
0.25 s and the application of an update never overlap, and a slow ``wg``/``nft`` never
stalls the stream. The service's main thread only starts, stops and tells it when the
interface was recreated (the keeper's tick re-adds the peers that vanished with it).

While the hub is unreachable nothing is undone: direct peers keep their paths, the last
policy stays loaded; the stream reconnects with backoff and the next full update replaces
everything. ``<state>/peers.json`` records the peers as last applied, for
``hivemind-agent status`` and the status page (agent/peerview.py reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Protocol, TypeVar

import grpc

from hivemind_cluster.agent.endpoints import own_endpoints
from hivemind_cluster.agent.memberfw import MemberFirewall
from hivemind_cluster.agent.peertrack import KnownPeer
from hivemind_cluster.agent.peerview import PEERS_FILE
from hivemind_cluster.agent.state import AgentSettings, Enrollment
from hivemind_cluster.client.channel import Identity, aio_channel
from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.core.files import write_public
from hivemind_cluster.core.names import HUB_NODE_ID
from hivemind_cluster.mesh.policy import Party, Policy
from hivemind_cluster.mesh.wireguard import WireGuardInterface
from hivemind_cluster.protos import mesh_pb2, mesh_pb2_grpc

log = logging.getLogger("hivemind.agent.peers")
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # as the worker's pool stream
TICK_SECONDS = 0.25
PATHS_EVERY = 2.0  # a report with the paths at least this often
ENDPOINTS_EVERY = 10.0  # this host's addresses are looked at again this often
DEFAULT_KEEPALIVE = 25  # seconds, when neither the hub nor the enrollment gives one
MAX_KEEPALIVE = 65535  # what WireGuard accepts
T = TypeVar("T")


class Keeper(Protocol):
    """What PeerSync needs of agent/paths.py's PathKeeper."""

    def replace(self, peers: Iterable[KnownPeer]) -> None: ...
    def upsert(self, peer: KnownPeer) -> None: ...
    def remove(self, public_key: str) -> None: ...
    def tick(self) -> bool: ...
    def allow_direct(self, allowed: bool) -> None: ...
    def paths(self) -> list[mesh_pb2.PeerPath]: ...
    def peers(self) -> list[KnownPeer]: ...
    def close(self) -> None: ...


KeeperFactory = Callable[[int], Keeper]  # persistent keepalive (s) -> a keeper


def party_of(peer: KnownPeer | mesh_pb2.MeshPeer) -> Party:
    return Party(peer.node_id, peer.name, peer.role, peer.overlay_ip, dict(peer.labels))


class PeerApplier:
    """Applies updates to a keeper and the firewall. Not thread-safe by design: only the
    "path-keeper" thread calls it. The keeper is made at the first update (it carries the
    persistent keepalive)."""

    def __init__(
        self,
        settings: AgentSettings,
        enrollment: Enrollment,
        keeper_factory: KeeperFactory,
        firewall: MemberFirewall,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.enrollment = enrollment
        self.keeper_factory = keeper_factory
        self.firewall = firewall
        self.clock = clock
        self.keeper: Keeper | None = None
        self.keepalive = enrollment.persistent_keepalive
        self.revision = 0  # the last revision applied
        self.policy: Policy | None = None
        self.me = Party(enrollment.node_id, enrollment.name, enrollment.role, enrollment.overlay_ip)
        self.hub = Party(HUB_NODE_ID, "hub", "hub", enrollment.hub_ip)
        self._firewall_error = ""

    def apply(self, update: mesh_pb2.PeerUpdate) -> None:
        """WireGuard first (a revoked peer is off the interface before anything else),
        then the firewall; ``revision`` moves only once both are done."""
        keeper = self._keeper(update.keepalive)
        if update.full:
            keeper.replace([KnownPeer.from_proto(p) for p in update.peers])
        else:
            for public_key in update.removed:
                keeper.remove(public_key)
            for peer in update.peers:
                keeper.upsert(KnownPeer.from_proto(peer))
        if update.HasField("self"):
            self.me = party_of(update.self)
        if update.HasField("policy"):
            self._take_policy(update.policy)
        self.enforce_policy()
        self.revision = update.revision
        self.write_state()

    def _keeper(self, keepalive: int) -> Keeper:
        if self.keeper is None:
            wanted = keepalive or self.keepalive or DEFAULT_KEEPALIVE
            self.keepalive = min(max(wanted, 1), MAX_KEEPALIVE)
            if self.keepalive != wanted:
                log.warning("persistent keepalive %d s out of range: %d s", wanted, self.keepalive)
            self.keeper = self.keeper_factory(self.keepalive)
        return self.keeper

    def new_session(self) -> None:
        """A new stream: nothing of it is applied yet (a restarted hub must not be acked a
        revision it never sent)."""
        self.revision = 0

    def _take_policy(self, message: mesh_pb2.Policy) -> None:
        try:
            self.policy = Policy.from_proto(message)
        except HiveMindError as exc:  # a hub newer than this agent, say: keep the last one
            log.error("policy %s refused, the previous one stays: %s", message.digest, exc)

    def enforce_policy(self) -> None:
        """Load the policy for the current peers (nothing before the first policy), and
        allow direct paths only once it is loaded. A failure is logged, once per distinct
        error: the peers are applied all the same, every one relayed."""
        if self.policy is None or self.keeper is None:
            return
        others = [self.hub, *(party_of(p) for p in self.known())]
        try:
            self.firewall.apply(self.policy, self.me, others)
        except Exception as exc:
            self.keeper.allow_direct(False)
            message = exc.message if isinstance(exc, HiveMindError) else repr(exc)
            if message != self._firewall_error:
                log.error(
                    "the member firewall could not be loaded: %s; direct paths are off, "
                    "every peer goes through the hub (which enforces the policy)",
                    message,
                )
            self._firewall_error = message
            return
        self._firewall_error = ""
        self.keeper.allow_direct(True)

    def known(self) -> list[KnownPeer]:
        return self.keeper.peers() if self.keeper is not None else []

    def tick(self) -> bool:
        return self.keeper.tick() if self.keeper is not None else False

    def report(self, endpoints: list[str]) -> mesh_pb2.MemberReport:
        paths = self.keeper.paths() if self.keeper is not None else []
        return mesh_pb2.MemberReport(
            applied_revision=self.revision, endpoints=endpoints, paths=paths
        )

    def write_state(self) -> None:
        document = {
            "time": self.clock(),
            "revision": self.revision,
            "policy": self.policy.digest() if self.policy is not None else "",
            "peers": [asdict(p) for p in sorted(self.known(), key=lambda p: p.name)],
        }
        write_public(self.settings.path / PEERS_FILE, json.dumps(document, indent=2) + "\n")

    def close(self) -> None:
        """The service stops: the keeper's peers and the policy table go."""
        try:
            if self.keeper is not None:
                self.keeper.close()
        finally:
            self.keeper = None
            self.firewall.remove()


class PeerSync:
    """The agent service's peer stream (see the module docstring); ``start``/``stop`` from
    the main thread."""

    def __init__(
        self,
        settings: AgentSettings,
        enrollment: Enrollment,
        identity: Identity,
        keeper_factory: KeeperFactory,
        *,
        firewall: MemberFirewall | None = None,
        channel_factory: Callable[[Identity], grpc.aio.Channel] = aio_channel,
        endpoints: Callable[[], list[str]] | None = None,
    ) -> None:
        self.identity = identity
        self.applier = PeerApplier(
            settings, enrollment, keeper_factory, firewall or MemberFirewall(enrollment.interface)
        )
        self.channel_factory = channel_factory
        self.endpoints = endpoints or (lambda: interface_endpoints(enrollment.interface))
        self.connected = False
        self._keeper_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="path-keeper")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._report_wanted: asyncio.Event | None = None
        self._started = threading.Event()
        self._own_endpoints: list[str] = []
        self._endpoints_at = 0.0  # monotonic; 0: look again now

    # ---- control from the main thread ----------------------------------------------------

    def start(self) -> PeerSync:
        self._thread = threading.Thread(target=self._run_forever, name="peer-sync", daemon=True)
        self._thread.start()
        self._started.wait(5)
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """End the stream, then take the keeper's peers and the policy table away. False
        if the thread is still at it after ``timeout`` (a ``wg`` or ``nft`` hanging)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended in between
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def interface_recreated(self) -> None:
        """The interface came back empty. Nothing to do on the keeper: its next tick
        re-adds the peers that were on the old one (agent/paths.py), and the policy table
        matches the interface by name. Its listen port may be new: endpoints again."""
        self._endpoints_at = 0.0

    # ---- the loop ------------------------------------------------------------------------

    def _run_forever(self) -> None:
        try:
            asyncio.run(self.run())
        except Exception:
            log.exception("the peer stream failed")

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._report_wanted = asyncio.Event()
        self._started.set()
        jobs = [asyncio.create_task(self._stay_connected()), asyncio.create_task(self._tick())]
        try:
            await self._stopping.wait()
        finally:
            for job in jobs:
                job.cancel()
            for job in jobs:
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            self.connected = False
            try:
                await self._on_keeper(self.applier.close)
            finally:
                self._keeper_thread.shutdown(wait=True)
        log.info("peer stream stopped")

    async def _on_keeper(self, action: Callable[..., T], *args: object) -> T:
        """Run ``action`` on the keeper's own thread (calls never overlap)."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._keeper_thread, action, *args)

    async def _tick(self) -> None:
        """The keeper's tick, whether or not the hub answers (direct paths live on)."""
        assert self._report_wanted is not None
        failing = ""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                changed = await self._on_keeper(self.applier.tick)
            except Exception as exc:  # the interface is being recreated, say: keep ticking
                message = exc.message if isinstance(exc, HiveMindError) else repr(exc)
                if message != failing:
                    log.warning(
                        "path check failed: %s",
                        message,
                        exc_info=not isinstance(exc, HiveMindError),
                    )
                failing = message
                continue
            failing = ""
            if changed:
                self._report_wanted.set()

    async def _stay_connected(self) -> None:
        failures = 0
        while True:
            try:
                if await self._session():
                    failures = 0
            except Exception as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError from exc  # grpc's CANCELLED: we are stopping
                if isinstance(exc, grpc.aio.AioRpcError):
                    log.warning("peer stream ended: %s %s", exc.code().name, exc.details())
                elif isinstance(exc, HiveMindError):
                    log.warning("peer stream ended: %s", exc.message)
                else:
                    log.exception("peer stream failed")
            self.connected = False
            await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
            failures += 1

    async def _session(self) -> bool:
        """One stream, until it ends; True if it delivered an update."""
        assert self._report_wanted is not None
        delivered = False
        async with self.channel_factory(self.identity) as channel:
            call = mesh_pb2_grpc.MeshStub(channel).Peers()
            await self._on_keeper(self.applier.new_session)
            self._endpoints_at = 0.0
            self._report_wanted.set()  # endpoints and paths at connect
            writer = asyncio.create_task(self._write_reports(call))
            try:
                while isinstance(update := await call.read(), mesh_pb2.PeerUpdate):
                    if not delivered:
                        log.info("peer stream connected (revision %d)", update.revision)
                    self.connected = delivered = True
                    await self._on_keeper(self.applier.apply, update)
                    self._report_wanted.set()
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncio.InvalidStateError):
                    await writer  # InvalidStateError: it wrote after the call had ended
        return delivered

    async def _write_reports(
        self, call: grpc.aio.StreamStreamCall[mesh_pb2.MemberReport, mesh_pb2.PeerUpdate]
    ) -> None:
        """One writer: a report when one is wanted (an update applied, a path changed,
        the connect) and at least every PATHS_EVERY; the latest state each time."""
        assert self._report_wanted is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_wanted.wait(), PATHS_EVERY)
            self._report_wanted.clear()
            endpoints = await self._current_endpoints()
            await call.write(await self._on_keeper(self.applier.report, endpoints))

    async def _current_endpoints(self) -> list[str]:
        if time.monotonic() - self._endpoints_at >= ENDPOINTS_EVERY:
            try:
                self._own_endpoints = await asyncio.to_thread(self.endpoints)
            except (HiveMindError, OSError) as exc:
                log.warning("no endpoint candidates: %s", exc)
            self._endpoints_at = time.monotonic()
        return self._own_endpoints


def interface_endpoints(interface: str) -> list[str]:
    return own_endpoints(interface, WireGuardInterface(interface).listen_port())
