"""Direct paths between members, the hub as the fallback relay.

Every member has the hub as a WireGuard peer whose allowed-ips are the whole overlay: that
is the relay. The keeper adds every other member as a peer with an endpoint candidate and
persistent keepalive but **no allowed-ips**: such a peer carries no traffic, yet WireGuard
handshakes with it (wireguard-go sends an initiation as soon as keepalive is switched on).
Once that handshake succeeds the keeper gives the peer its ``overlay_ip/32``, which beats
the hub's /16 by longest prefix: traffic goes direct. When the direct path goes stale the
keeper takes the /32 away again (traffic is back through the hub) and retries candidates.

A fresh handshake is the only way in: demoting or retrying re-adds the peer (remove + add
in one ``wg set``), which zeroes its handshake and counters, so an old session can never
promote it again. The endpoint of a direct peer is never touched: WireGuard's roaming may
have learned a better one than any candidate (a symmetric NAT's mapping, for instance).

Liveness is received bytes, with one exception: a peer that only sends handshake
initiations (148 bytes each) is not alive. When A's packets to B are lost but B's reach A,
B demotes A and re-adds it, and B's initiations keep A's rx growing although A's answers
never arrive; so a tick whose rx growth is a non-zero multiple of 148 bytes while
``latest_handshake`` stayed the same does not count, and a direct peer that showed nothing
else for STALE_SECONDS is demoted. (Transport packets are 32 bytes plus a multiple of 16,
so real traffic is a multiple of 148 in every tick for 20 s only by a freak.)

Direct paths bypass the hub's filtering, so they are allowed only while the member
firewall (the overlay policy on this interface) is loaded: ``allow_direct(False)`` demotes
every direct peer and keeps them all relayed until ``allow_direct(True)``.

Cost: ``tick()`` is one ``wg show dump``; every re-add of a tick (and of an update) goes in
one ``wg set``. A relayed peer gets its next candidate every TRY_SECONDS; after each full
pass over its candidates the pause doubles (with jitter), up to MAX_TRY_SECONDS. One peer
that fails (a bad endpoint, a ``wg set`` refused) is logged and never stops the others.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from hivemind_cluster.agent.peertrack import KnownPeer, PeerControl, Track, path_of, send_probe
from hivemind_cluster.core.errors import HiveMindError, InvalidInput
from hivemind_cluster.mesh.wireguard import ONLINE_HANDSHAKE_AGE, PeerStatus
from hivemind_cluster.protos import mesh_pb2

log = logging.getLogger(__name__)

# A direct peer from which nothing arrived for this long, although probes went out, is stale.
STALE_SECONDS = 20.0
# A direct peer silent for this long gets a probe (WireGuard answers any data within 10 s).
PROBE_SECONDS = 5.0
# A relayed peer gets its next endpoint candidate this often (during its first pass)...
TRY_SECONDS = 6.0
# ... and after each full pass over its candidates twice as rarely, up to this.
MAX_TRY_SECONDS = 120.0
# New endpoint candidates for a relayed peer are tried this long after they arrive.
SETTLE_SECONDS = 1.0
JITTER = 0.2  # a pause is stretched by up to this fraction, so peers do not retry in step
# A WireGuard handshake initiation on the wire (what a peer sends while it has no session).
INITIATION_BYTES = 148


class PathKeeper:
    """Keeps one WireGuard peer per known member, direct when a handshake proves it works.

    Never manages the hub's key nor this device's own (``own_public_key``), nor a peer
    whose overlay address is not one of the overlay's (``own_address``: this interface's
    ``ip/prefix``) or is the hub's (``hub_ip``) or ours. Direct paths start disallowed:
    ``allow_direct(True)`` once the member firewall is loaded. Thread-safe: the agent
    applies updates from its stream while another thread ticks.
    """

    def __init__(
        self,
        interface: PeerControl,
        hub_public_key: str,
        keepalive: int,
        clock: Callable[[], float] = time.time,
        probe: Callable[[str], None] | None = None,
        *,
        own_public_key: str = "",
        own_address: str = "",
        hub_ip: str = "",
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not 1 <= keepalive <= 65535:
            raise InvalidInput(f"persistent keepalive must be 1-65535 seconds, not {keepalive}")
        self.interface = interface
        self.hub_public_key = hub_public_key
        self.own_public_key = own_public_key
        self.keepalive = keepalive
        self.clock = clock
        self.probe = probe or send_probe
        self.jitter = jitter
        self.overlay = ipaddress.ip_interface(own_address).network if own_address else None
        self.reserved = {ip for ip in (hub_ip, own_address.split("/")[0]) if ip}
        self.direct_allowed = False
        self.tracks: dict[str, Track] = {}
        self.refused: dict[str, str] = {}  # public key -> why (logged once)
        self.pending: dict[str, str] = {}  # re-adds not yet sent: public key -> endpoint
        # Of those, the ones to skip if the peer turns out to be reaching us (a retry, a new
        # candidate): public key -> (when it was last added, its rx as of the last dump).
        self.unless_live: dict[str, tuple[float, int]] = {}
        self.lock = threading.RLock()

    # ---- the peer set --------------------------------------------------------------------

    def replace(self, peers: Iterable[KnownPeer]) -> None:
        """The full set: peers not in it are removed, also ones a previous run left behind."""
        with self.lock, self.sending():
            wanted = {peer.public_key: peer for peer in peers if self.acceptable(peer)}
            for key in list(self.tracks):
                if key not in wanted:
                    self.remove(key)
            self.isolated(functools.partial(self.remove_leftovers, wanted), "leftovers")
            for peer in wanted.values():
                self.isolated(functools.partial(self.take, peer), peer.name)

    def remove_leftovers(self, wanted: Mapping[str, KnownPeer]) -> None:
        """Peers on WireGuard the keeper neither wants nor added (a previous run's)."""
        for status in self.interface.peers():
            key = status.public_key
            if key not in wanted and key not in self.tracks and self.manageable(key):
                log.info("removing WireGuard peer %s left by a previous run", key)
                self.isolated(functools.partial(self.interface.remove_peer, key), key)

    def upsert(self, peer: KnownPeer) -> None:
        with self.lock, self.sending():
            if self.acceptable(peer):
                self.isolated(functools.partial(self.take, peer), peer.name)
            elif peer.public_key in self.tracks:
                self.remove(peer.public_key)  # it was fine before: off WireGuard now

    def take(self, peer: KnownPeer) -> None:
        """Add ``peer`` or update it (the re-add queued, sent by ``sending``)."""
        track = self.tracks.get(peer.public_key)
        if track is None:
            now = self.clock()
            track = Track(peer, tried_at=now, rx_changed_at=now, pause=TRY_SECONDS)
            self.tracks[peer.public_key] = track
            self.readd(track, 0)
            return
        before, track.peer = track.peer, peer
        if track.direct and peer.overlay_ip != before.overlay_ip:
            self.interface.set_peer(peer.public_key, allowed_ips=(f"{peer.overlay_ip}/32",))
        elif not track.direct and peer.endpoints != before.endpoints:
            # New candidates (it connected, the hub saw it move): the first one soon, not at
            # once. The same event makes the peer start a handshake with us right now; a
            # re-add in the middle of it would end it (see ``without_live_sessions``).
            track.pause, track.candidate = TRY_SECONDS, -1  # retry: candidate 0
            track.retry_at = min(track.retry_at, self.clock() + SETTLE_SECONDS)

    def remove(self, public_key: str) -> None:
        """Off WireGuard at once (a revoked member must lose its direct path now)."""
        if not self.manageable(public_key):
            return
        with self.lock:
            self.tracks.pop(public_key, None)
            self.pending.pop(public_key, None)
            self.unless_live.pop(public_key, None)
            try:
                self.interface.remove_peer(public_key)
            except HiveMindError as error:
                log.warning("could not remove WireGuard peer %s: %s", public_key, error)

    def manageable(self, public_key: str) -> bool:
        return bool(public_key) and public_key not in (self.hub_public_key, self.own_public_key)

    def acceptable(self, peer: KnownPeer) -> bool:
        """Can this peer be managed? Logs why not, once per peer and reason."""
        why = self.refusal(peer)
        if not why:
            self.refused.pop(peer.public_key, None)
            return True
        if self.refused.get(peer.public_key) != why:
            log.warning("ignoring peer %r (%s): %s", peer.name, peer.public_key, why)
        self.refused[peer.public_key] = why
        return False

    def refusal(self, peer: KnownPeer) -> str:
        if not peer.public_key:
            return "no public key"
        if peer.public_key == self.hub_public_key:
            return "it has the hub's key"
        if peer.public_key == self.own_public_key:
            return "it has this device's own key"
        try:
            address = ipaddress.IPv4Address(peer.overlay_ip)
        except ValueError:
            return f"overlay address {peer.overlay_ip!r} is not an IPv4 address"
        if self.overlay is not None and address not in self.overlay:
            return f"overlay address {address} is outside the overlay {self.overlay}"
        if peer.overlay_ip in self.reserved:
            return f"overlay address {address} is the hub's or this device's own"
        return ""

    # ---- direct or not -------------------------------------------------------------------

    def allow_direct(self, allowed: bool) -> None:
        """Direct paths on (the member firewall is loaded) or off: every direct peer goes
        back through the hub, whose forwarding enforces the policy, and stays there."""
        with self.lock:
            if allowed == self.direct_allowed:
                return
            self.direct_allowed = allowed
            if allowed:
                log.info("direct paths allowed: the member firewall is loaded")
                return
            log.info("direct paths off: every peer goes through the hub")
            for track in self.tracks.values():
                if track.direct:
                    self.isolated(functools.partial(self.hold_back, track), track=track)

    def hold_back(self, track: Track) -> bool:
        """Relayed, its session kept: it goes direct again at once when allowed. (A
        failure leaves it direct, and the next tick tries again.)"""
        self.interface.set_peer(track.peer.public_key, allowed_ips=())
        track.direct = False
        return True

    # ---- the tick ------------------------------------------------------------------------

    def tick(self) -> bool:
        """One look at WireGuard: promote, demote, retry, probe. True if a path changed."""
        with self.lock, self.sending():
            statuses = {status.public_key: status for status in self.interface.peers()}
            now = self.clock()
            changed = False
            for track in list(self.tracks.values()):
                status = statuses.get(track.peer.public_key)
                look = functools.partial(self.look, track, status, now)
                changed |= bool(self.isolated(look, track=track))
            return changed

    def look(self, track: Track, status: PeerStatus | None, now: float) -> bool:
        if status is None:
            return self.missing(track, now)
        track.status = status
        if self.alive(track, status):
            track.rx_changed_at = now
        handshake = status.latest_handshake
        fresh = handshake > 0 and now - handshake < ONLINE_HANDSHAKE_AGE
        if track.direct and not self.direct_allowed:
            return self.hold_back(track)
        if not track.direct:
            if fresh and handshake >= track.tried_at - 1:
                # A working path; held back while the member firewall is not loaded.
                return self.promote(track, now) if self.direct_allowed else False
            if now >= track.retry_at:
                self.retry(track, now)
            return False
        silent = now - track.rx_changed_at
        if not fresh or silent >= STALE_SECONDS:
            log.info("direct path to %s is stale: back through the hub", track.peer.name)
            track.pause = TRY_SECONDS
            self.readd(track, track.candidate, status.endpoint)
            return True
        if silent >= PROBE_SECONDS and now - track.probed_at >= PROBE_SECONDS:
            track.probed_at = now
            self.probe(track.peer.overlay_ip)
        return False

    @staticmethod
    def alive(track: Track, status: PeerStatus) -> bool:
        """Did the peer show a sign of life since the last dump? Handshake initiations
        alone are none (the module docstring says why)."""
        grown = status.rx_bytes - track.rx_bytes
        same_handshake = status.latest_handshake == track.handshake
        track.rx_bytes, track.handshake = status.rx_bytes, status.latest_handshake
        initiations_only = grown > 0 and grown % INITIATION_BYTES == 0 and same_handshake
        return grown != 0 and not initiations_only

    def missing(self, track: Track, now: float) -> bool:
        """Not in the dump: removed behind our back (or the interface was recreated) if it
        was there at the last look, and then re-added at once; if it never showed up since
        its re-add (WireGuard ignored it), only on the retry schedule."""
        was_direct = track.direct
        if track.status is not None:
            self.readd(track, track.candidate)
        elif now >= track.retry_at:
            self.retry(track, now)
        return was_direct

    def promote(self, track: Track, now: float) -> bool:
        peer = track.peer
        self.interface.set_peer(peer.public_key, allowed_ips=(f"{peer.overlay_ip}/32",))
        track.direct, track.rx_changed_at, track.pause = True, now, TRY_SECONDS
        log.info("direct path to %s via %s", peer.name, track.status and track.status.endpoint)
        return True

    def retry(self, track: Track, now: float) -> None:
        """The next candidate; after a full pass over them (at once with one or none) the
        pause before the next re-add doubles."""
        following = track.candidate + 1
        if following >= len(track.peer.endpoints):
            track.pause = min(track.pause * 2, MAX_TRY_SECONDS)
        self.readd(track, following, unless_live=True)

    def readd(
        self, track: Track, index: int, endpoint: str = "", *, unless_live: bool = False
    ) -> None:
        """Queue a re-add of the peer, relayed, with candidate ``index`` (or ``endpoint``);
        ``sending`` sends every queued one in one ``wg set``. ``unless_live``: skipped if,
        by then, the peer has a session from a handshake since it was last added."""
        if unless_live:
            self.unless_live.setdefault(track.peer.public_key, (track.tried_at, track.rx_bytes))
        else:
            self.unless_live.pop(track.peer.public_key, None)
        candidates = track.peer.endpoints
        track.candidate = index % len(candidates) if candidates else 0
        endpoint = endpoint or (candidates[track.candidate] if candidates else "")
        now = self.clock()
        track.direct, track.rx_bytes, track.handshake, track.tried_at = False, 0, 0, now
        track.rx_changed_at, track.status = now, None
        track.retry_at = now + track.pause * (1 + JITTER * self.jitter())
        self.pending[track.peer.public_key] = endpoint

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Send the re-adds queued in the block, all in one ``wg set`` (one per peer if
        that fails, so one bad peer does not hold back the others)."""
        try:
            yield
        finally:
            pending, self.pending = list(self.pending.items()), {}
            unless_live, self.unless_live = self.unless_live, {}
            if unless_live:
                try:
                    pending = self.without_live_sessions(pending, unless_live)
                except HiveMindError as error:  # re-add them all, as if none were live
                    log.warning("could not look for live sessions: %s", error.message)
            if pending:
                self.send(pending)

    def without_live_sessions(
        self, pending: list[tuple[str, str]], unless_live: Mapping[str, tuple[float, int]]
    ) -> list[tuple[str, str]]:
        """``pending`` less the retries of peers that are reaching us: a handshake since
        they were added, or bytes since the last dump (the other side's initiation, from
        behind a NAT that lets only its own packets out, say). A re-add would end what is
        forming while the other side, which may have completed the handshake already,
        sends direct: the pair would be cut until it gives up (~15 s). Such a peer keeps
        its session and its ``tried_at``, so a tick promotes it once the handshake is in."""
        statuses = {status.public_key: status for status in self.interface.peers()}
        now = self.clock()
        kept = []
        for key, endpoint in pending:
            status, track = statuses.get(key), self.tracks.get(key)
            if track is None or status is None or key not in unless_live:
                kept.append((key, endpoint))
                continue
            added_at, rx_before = unless_live[key]
            handshake = status.latest_handshake
            shook = handshake > 0 and now - handshake < ONLINE_HANDSHAKE_AGE
            if (shook and handshake >= added_at - 1) or status.rx_bytes > rx_before:
                log.info("%s is reaching us: its session is kept", track.peer.name)
                track.tried_at = added_at
                continue
            kept.append((key, endpoint))
        return kept

    def send(self, pending: list[tuple[str, str]]) -> None:
        try:
            self.interface.readd_peers(pending, self.keepalive)
            return
        except HiveMindError as error:
            if len(pending) == 1:
                self.send_one(*pending[0], error)
                return
        for key, endpoint in pending:
            try:
                self.interface.readd_peer(key, endpoint, self.keepalive)
            except HiveMindError as error:
                self.send_one(key, endpoint, error)

    def send_one(self, key: str, endpoint: str, error: HiveMindError) -> None:
        """``endpoint`` was refused (a name that does not resolve, say): without an
        endpoint the peer can still answer the other side's handshake."""
        track = self.tracks.get(key)
        name = track.peer.name if track else key
        log.warning("re-adding %s with endpoint %r failed: %s", name, endpoint, error)
        if endpoint:
            self.isolated(
                functools.partial(self.interface.readd_peer, key, "", self.keepalive), name
            )

    def isolated(
        self, action: Callable[[], object], name: str = "", track: Track | None = None
    ) -> object:
        """Run ``action`` for one peer (``track``'s, or the one called ``name``); a failure
        is logged (once until it changes, with a track) and the other peers carry on."""
        name = track.peer.name if track is not None else name
        try:
            result = action()
        except Exception as error:
            message = error.message if isinstance(error, HiveMindError) else repr(error)
            if track is None or track.failure != message:
                log.warning("peer %s: %s", name, message)
            if track is not None:
                track.failure = message
            return None
        if track is not None:
            track.failure = ""
        return result

    # ---- what it knows -------------------------------------------------------------------

    def paths(self) -> list[mesh_pb2.PeerPath]:
        """The path to every known peer as of the last tick."""
        with self.lock:
            return [path_of(track) for track in self.tracks.values()]

    def peers(self) -> list[KnownPeer]:
        with self.lock:
            return [track.peer for track in self.tracks.values()]

    def close(self) -> None:
        """Remove every peer the keeper added (never the hub's)."""
        with self.lock:
            for key in list(self.tracks):
                self.remove(key)
