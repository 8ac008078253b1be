"""PathKeeper against a fake WireGuard interface (the boundary) and a fake clock."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest

from hivemind_cluster.agent.paths import (
    INITIATION_BYTES,
    JITTER,
    MAX_TRY_SECONDS,
    PROBE_SECONDS,
    SETTLE_SECONDS,
    STALE_SECONDS,
    TRY_SECONDS,
    PathKeeper,
)
from hivemind_cluster.agent.peertrack import KnownPeer
from hivemind_cluster.core.errors import InvalidInput, SystemFailure
from hivemind_cluster.mesh import wireguard
from hivemind_cluster.mesh.wireguard import (
    ONLINE_HANDSHAKE_AGE,
    PeerStatus,
    WireGuardInterface,
    parse_dump_line,
    peer_arguments,
)
from hivemind_cluster.protos import mesh_pb2

HUB = "hub-key"
OWN = "own-key"
START = 1_000_000.0


@dataclass
class FakeWireGuard:
    """Peers as ``wg show dump`` would list them; every change is recorded per peer, and
    every ``wg`` run counted (``processes``). ``broken`` keys: wg refuses any change to
    them; ``ignored`` keys: wg accepts them and does nothing (the device's own key)."""

    peers_by_key: dict[str, PeerStatus] = field(default_factory=dict)
    keepalives: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    dumps: int = 0
    processes: int = 0
    unresolvable: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    meanwhile: list[Callable[[], None]] = field(default_factory=list)  # after the next dump

    def peers(self) -> list[PeerStatus]:
        self.dumps += 1
        found = list(self.peers_by_key.values())
        while self.meanwhile:
            self.meanwhile.pop(0)()
        return found

    def refuse(self, public_key: str, endpoint: str = "") -> None:
        if public_key in self.broken:
            raise SystemFailure(f"`wg set` failed: peer {public_key} refused")
        if endpoint in self.unresolvable:
            raise SystemFailure(f"`wg set` failed: Name or service not known: `{endpoint}'")

    def set_peer(
        self,
        public_key: str,
        *,
        allowed_ips: tuple[str, ...] | None = None,
        endpoint: str = "",
        keepalive: int | None = None,
    ) -> None:
        self.processes += 1
        self.refuse(public_key)
        self.calls.append(("set", public_key, ",".join(allowed_ips or ()), endpoint))
        old = self.peers_by_key.get(public_key) or PeerStatus(public_key, "", (), 0, 0, 0)
        self.peers_by_key[public_key] = replace(
            old,
            allowed_ips=old.allowed_ips if allowed_ips is None else allowed_ips,
            endpoint=endpoint or old.endpoint,
        )

    def readd_peer(self, public_key: str, endpoint: str, keepalive: int) -> None:
        self.readd_peers([(public_key, endpoint)], keepalive)

    def readd_peers(self, peers: Sequence[tuple[str, str]], keepalive: int) -> None:
        """As wg: every argument checked before anything changes."""
        self.processes += 1
        for public_key, endpoint in peers:
            self.refuse(public_key, endpoint)
        for public_key, endpoint in peers:
            self.calls.append(("readd", public_key, endpoint))
            if public_key not in self.ignored:
                self.peers_by_key[public_key] = PeerStatus(public_key, endpoint, (), 0, 0, 0)
                self.keepalives[public_key] = keepalive

    def remove_peer(self, public_key: str) -> None:
        self.processes += 1
        self.refuse(public_key)
        self.calls.append(("remove", public_key))
        self.peers_by_key.pop(public_key, None)

    # What the network does:
    def handshake(self, key: str, at: float, endpoint: str = "") -> None:
        old = self.peers_by_key[key]
        self.peers_by_key[key] = replace(
            old, latest_handshake=int(at), endpoint=endpoint or old.endpoint
        )

    def receive(self, key: str, count: int = 32) -> None:
        old = self.peers_by_key[key]
        self.peers_by_key[key] = replace(old, rx_bytes=old.rx_bytes + count)

    def allowed(self, key: str) -> tuple[str, ...]:
        return self.peers_by_key[key].allowed_ips


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def peer(name: str = "b", *endpoints: str, ip: str = "100.64.0.3") -> KnownPeer:
    return KnownPeer(
        node_id=f"id-{name}",
        name=name,
        role="worker",
        public_key=f"key-{name}",
        overlay_ip=ip,
        endpoints=endpoints or ("198.51.100.3:51820", "10.0.0.3:51820"),
    )


@dataclass
class World:
    wg: FakeWireGuard
    clock: Clock
    keeper: PathKeeper
    probes: list[str]

    def promoted(self, known: KnownPeer) -> None:
        self.keeper.upsert(known)
        self.wg.handshake(known.public_key, self.clock.now)
        assert self.keeper.tick()


@pytest.fixture
def world() -> World:
    wg = FakeWireGuard()
    wg.peers_by_key[HUB] = PeerStatus(HUB, "198.51.100.9:7443", ("100.64.0.0/16",), 1, 5, 5)
    clock, probes = Clock(), list[str]()
    keeper = PathKeeper(
        wg,
        HUB,
        keepalive=5,
        clock=clock,
        probe=probes.append,
        own_public_key=OWN,
        own_address="100.64.0.9/16",
        hub_ip="100.64.0.1",
        jitter=lambda: 0.0,
    )
    keeper.allow_direct(True)  # as the agent does once the member firewall is loaded
    return World(wg, clock, keeper, probes)


def test_a_new_peer_is_added_relayed_with_its_first_candidate_and_keepalive(world: World) -> None:
    world.keeper.upsert(peer())
    assert world.wg.calls == [("readd", "key-b", "198.51.100.3:51820")]
    assert world.wg.allowed("key-b") == ()
    assert world.wg.keepalives["key-b"] == 5
    assert not world.keeper.tick()
    [path] = world.keeper.paths()
    assert not path.direct and path.endpoint == "198.51.100.3:51820"


def test_a_handshake_makes_the_path_direct(world: World) -> None:
    world.keeper.upsert(peer())
    world.clock.advance(0.3)
    world.wg.handshake("key-b", world.clock.now)
    assert world.keeper.tick()
    assert world.wg.allowed("key-b") == ("100.64.0.3/32",)
    assert world.keeper.paths()[0].direct
    assert not world.keeper.tick()  # nothing more to do


def test_a_tick_reads_wireguard_once_and_changes_nothing_when_nothing_changed(
    world: World,
) -> None:
    world.promoted(peer())
    world.keeper.upsert(peer("c", ip="100.64.0.4"))
    calls, dumps = len(world.wg.calls), world.wg.dumps
    for _ in range(4):
        world.clock.advance(0.25)
        world.wg.receive("key-b")
        world.keeper.tick()
    assert world.wg.dumps == dumps + 4
    assert len(world.wg.calls) == calls


def test_a_silent_direct_peer_is_probed_every_probe_interval(world: World) -> None:
    world.promoted(peer())
    world.clock.advance(PROBE_SECONDS - 0.1)
    world.keeper.tick()
    assert world.probes == []
    world.clock.advance(0.1)
    world.keeper.tick()
    world.clock.advance(1)
    world.keeper.tick()
    assert world.probes == ["100.64.0.3"]
    world.clock.advance(PROBE_SECONDS)
    world.keeper.tick()
    assert world.probes == ["100.64.0.3"] * 2


def test_traffic_keeps_a_direct_peer_direct_without_probes(world: World) -> None:
    world.promoted(peer())
    for _ in range(int(STALE_SECONDS * 2)):
        world.clock.advance(1)
        world.wg.receive("key-b")
        assert not world.keeper.tick()
    assert world.probes == []
    assert world.wg.allowed("key-b") == ("100.64.0.3/32",)


def test_a_direct_peer_silent_for_stale_seconds_goes_back_through_the_hub(world: World) -> None:
    world.promoted(peer())
    world.wg.handshake("key-b", world.clock.now, endpoint="198.51.100.7:40000")  # roamed
    world.clock.advance(STALE_SECONDS - 0.5)
    assert not world.keeper.tick()
    world.clock.advance(0.5)
    assert world.keeper.tick()
    assert world.wg.allowed("key-b") == ()
    # Retried first where WireGuard last reached it.
    assert world.wg.calls[-1] == ("readd", "key-b", "198.51.100.7:40000")
    assert not world.keeper.paths()[0].direct
    assert world.wg.peers_by_key[HUB].allowed_ips == ("100.64.0.0/16",)


def test_a_handshake_older_than_wireguard_accepts_demotes(world: World) -> None:
    world.promoted(peer())
    for _ in range(int(ONLINE_HANDSHAKE_AGE)):
        world.clock.advance(1)
        world.wg.receive("key-b")
        if world.keeper.tick():
            break
    assert world.clock.now - START == ONLINE_HANDSHAKE_AGE
    assert world.wg.allowed("key-b") == ()


def test_only_a_new_handshake_promotes_again(world: World) -> None:
    world.promoted(peer())
    world.clock.advance(STALE_SECONDS)
    assert world.keeper.tick()  # demoted; the re-add zeroed the handshake
    world.clock.advance(1)
    assert not world.keeper.tick()
    world.wg.handshake("key-b", START + 1)  # a session from before the re-add
    world.clock.advance(1)
    assert not world.keeper.tick()
    world.wg.handshake("key-b", world.clock.now)
    world.clock.advance(0.25)
    assert world.keeper.tick()
    assert world.wg.allowed("key-b") == ("100.64.0.3/32",)


def readds_until(world: World, seconds: float) -> list[tuple[float, str]]:
    """When (seconds from now) and with which endpoint the keeper re-adds, ticking 4/s."""
    start, seen, tried = world.clock.now, len(world.wg.calls), []
    while world.clock.now - start < seconds:
        world.clock.advance(0.25)
        world.keeper.tick()
        for call in world.wg.calls[seen:]:
            if call[0] == "readd":
                tried.append((world.clock.now - start, call[2]))
        seen = len(world.wg.calls)
    return tried


def test_a_relayed_peer_tries_each_candidate_then_backs_off_after_each_pass(
    world: World,
) -> None:
    world.keeper.upsert(peer("b", "1.1.1.1:1", "2.2.2.2:2"))
    six, twelve = TRY_SECONDS, 2 * TRY_SECONDS
    assert readds_until(world, 4 * twelve) == [
        (six, "2.2.2.2:2"),  # the first pass, every TRY_SECONDS
        (2 * six, "1.1.1.1:1"),  # a full pass done: twice as long from here on
        (2 * six + twelve, "2.2.2.2:2"),
        (2 * six + 2 * twelve, "1.1.1.1:1"),
    ]


def test_a_single_candidate_is_re_added_only_on_the_backoff_schedule(world: World) -> None:
    world.keeper.upsert(peer("b", "1.1.1.1:1"))
    gaps, last = [], 0.0
    for at, _ in readds_until(world, 1000):
        gaps.append(at - last)
        last = at
    assert gaps == [6, 12, 24, 48, 96, 120, 120, 120, 120, 120, 120][: len(gaps)]
    assert len(gaps) == 11 and MAX_TRY_SECONDS == 120


def test_the_pause_is_stretched_by_jitter_within_bounds() -> None:
    wg, clock = FakeWireGuard(), Clock()
    keeper = PathKeeper(wg, HUB, keepalive=5, clock=clock, jitter=lambda: 1.0)
    keeper.upsert(peer("b", "1.1.1.1:1", "2.2.2.2:2"))
    longest = TRY_SECONDS * (1 + JITTER)
    clock.advance(longest - 0.01)
    keeper.tick()
    assert len(wg.calls) == 1
    clock.advance(0.01)
    keeper.tick()
    assert wg.calls[-1] == ("readd", "key-b", "2.2.2.2:2")


def test_every_re_add_of_an_update_or_a_tick_goes_in_one_wg_set(world: World) -> None:
    many = [peer(f"p{i}", ip=f"100.64.1.{i}") for i in range(20)]
    before = world.wg.processes
    world.keeper.replace(many)
    assert world.wg.processes == before + 1
    assert {c[1] for c in world.wg.calls if c[0] == "readd"} == {p.public_key for p in many}
    world.clock.advance(TRY_SECONDS)
    before = world.wg.processes
    world.keeper.tick()  # all twenty retry now: still one wg set
    assert world.wg.processes == before + 1


def test_a_peer_whose_endpoint_wg_refuses_does_not_hold_back_the_batch(world: World) -> None:
    world.wg.unresolvable.add("nowhere.invalid:1")
    world.keeper.replace([peer("b", "nowhere.invalid:1"), peer("c", ip="100.64.0.4")])
    assert {"key-b", "key-c"} <= set(world.wg.peers_by_key)
    assert world.wg.peers_by_key["key-b"].endpoint == ""
    assert world.wg.peers_by_key["key-c"].endpoint == "198.51.100.3:51820"


def test_new_candidates_for_a_relayed_peer_are_tried_once_settled(world: World) -> None:
    world.keeper.upsert(peer("b", "1.1.1.1:1"))
    world.keeper.upsert(peer("b", "3.3.3.3:3", "1.1.1.1:1"))
    assert world.wg.calls[-1] == ("readd", "key-b", "1.1.1.1:1")  # not at once
    world.clock.advance(SETTLE_SECONDS)
    world.keeper.tick()
    assert world.wg.calls[-1] == ("readd", "key-b", "3.3.3.3:3")


def test_new_candidates_do_not_end_a_session_the_other_side_just_started(
    world: World,
) -> None:
    """Behind a symmetric NAT only the other side's initiation gets through; it may come
    in just before the hub's update with new candidates. A re-add would end the session
    the other side already sends on directly: the pair would be cut for ~15 s."""
    world.keeper.upsert(peer("b", "1.1.1.1:1"))
    world.clock.advance(1)
    assert not world.keeper.tick()
    world.wg.handshake("key-b", world.clock.now, endpoint="198.51.100.7:23869")
    world.keeper.upsert(peer("b", "3.3.3.3:3", "1.1.1.1:1"))
    assert world.wg.calls[-1] == ("readd", "key-b", "1.1.1.1:1")  # only the first add
    world.clock.advance(0.25)
    assert world.keeper.tick()
    assert world.wg.allowed("key-b") == ("100.64.0.3/32",)
    assert world.wg.peers_by_key["key-b"].endpoint == "198.51.100.7:23869"


def test_a_retry_does_not_end_a_session_that_came_in_during_the_tick(world: World) -> None:
    world.keeper.upsert(peer("b", "1.1.1.1:1", "2.2.2.2:2"))
    world.clock.advance(TRY_SECONDS)
    arrives = lambda: world.wg.handshake("key-b", world.clock.now)  # noqa: E731
    world.wg.meanwhile.append(arrives)  # after the tick's dump, before its re-add
    world.keeper.tick()
    assert [c for c in world.wg.calls if c[0] == "readd"] == [("readd", "key-b", "1.1.1.1:1")]
    world.clock.advance(0.25)
    assert world.keeper.tick()
    assert world.wg.allowed("key-b") == ("100.64.0.3/32",)


def test_a_retry_waits_while_the_other_sides_initiation_is_in_flight(world: World) -> None:
    """Its initiation came in, our answer is on its way: no handshake yet on our side."""
    world.keeper.upsert(peer("b", "1.1.1.1:1", "2.2.2.2:2"))
    world.clock.advance(TRY_SECONDS)
    world.wg.meanwhile.append(lambda: world.wg.receive("key-b", INITIATION_BYTES))
    world.keeper.tick()
    assert [c for c in world.wg.calls if c[0] == "readd"] == [("readd", "key-b", "1.1.1.1:1")]
    world.wg.handshake("key-b", world.clock.now)
    world.clock.advance(0.25)
    assert world.keeper.tick()


def test_a_retry_still_goes_out_when_no_session_came_in(world: World) -> None:
    world.keeper.upsert(peer("b", "1.1.1.1:1", "2.2.2.2:2"))
    world.wg.handshake("key-b", world.clock.now - 200)  # an old session: not live
    world.clock.advance(TRY_SECONDS)
    world.keeper.tick()
    assert world.wg.calls[-1] == ("readd", "key-b", "2.2.2.2:2")


def test_the_endpoint_of_a_direct_peer_is_never_touched(world: World) -> None:
    world.promoted(peer())
    calls = len(world.wg.calls)
    world.keeper.upsert(peer("b", "3.3.3.3:3"))
    assert len(world.wg.calls) == calls
    world.keeper.upsert(peer("b", "3.3.3.3:3", ip="100.64.0.33"))
    assert world.wg.calls[-1] == ("set", "key-b", "100.64.0.33/32", "")


def test_an_unresolvable_candidate_still_leaves_the_peer_without_endpoint(world: World) -> None:
    world.wg.unresolvable.add("nowhere.invalid:1")
    world.keeper.upsert(peer("b", "nowhere.invalid:1", "1.1.1.1:1"))
    assert world.wg.calls[-1] == ("readd", "key-b", "")
    assert "key-b" in world.wg.peers_by_key
    world.clock.advance(TRY_SECONDS)
    world.keeper.tick()
    assert world.wg.calls[-1] == ("readd", "key-b", "1.1.1.1:1")


def test_a_peer_removed_behind_the_keepers_back_is_added_again(world: World) -> None:
    world.promoted(peer())
    world.wg.remove_peer("key-b")
    assert world.keeper.tick()
    assert world.wg.calls[-1][0:2] == ("readd", "key-b")
    assert world.wg.allowed("key-b") == ()


def test_a_recreated_interface_gets_every_peer_back_at_the_next_tick(world: World) -> None:
    world.promoted(peer())
    world.keeper.upsert(peer("c", ip="100.64.0.4"))
    world.clock.advance(0.25)
    world.keeper.tick()
    world.wg.peers_by_key = {HUB: world.wg.peers_by_key[HUB]}  # a new, empty interface
    before = world.wg.processes
    world.clock.advance(0.25)
    assert world.keeper.tick()  # b was direct
    assert {"key-b", "key-c"} <= set(world.wg.peers_by_key)
    assert world.wg.processes == before + 1


def test_a_peer_wireguard_ignores_is_re_added_only_on_the_backoff_schedule(
    world: World,
) -> None:
    world.wg.ignored.add("key-b")
    world.keeper.upsert(peer("b", "1.1.1.1:1"))
    assert [at for at, _ in readds_until(world, 60)] == [6, 18, 42]


def test_one_failing_peer_never_stops_the_others(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.keeper.replace([peer("b"), peer("c", ip="100.64.0.4")])
    world.wg.broken.add("key-b")
    for key in ("key-b", "key-c"):
        world.wg.handshake(key, world.clock.now)
    for _ in range(3):
        world.clock.advance(0.25)
        world.keeper.tick()
    assert world.wg.allowed("key-c") == ("100.64.0.4/32",)
    assert world.wg.allowed("key-b") == ()
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and "peer b" in r.message]
    assert len(failures) == 1  # once, not every tick
    world.keeper.upsert(peer("b", "3.3.3.3:3"))  # its re-add fails: logged, not raised
    world.keeper.replace([peer("b", "4.4.4.4:4"), peer("c", "5.5.5.5:5", ip="100.64.0.4")])
    world.keeper.remove("key-b")
    world.wg.broken.clear()
    world.keeper.upsert(peer("d", ip="100.64.0.5"))
    assert "key-d" in world.wg.peers_by_key


def test_handshake_initiations_alone_do_not_keep_a_peer_direct(world: World) -> None:
    """A's packets to B are lost: B re-adds A and its initiations keep A's rx growing."""
    world.promoted(peer())
    demoted_at = None
    for tick in range(int(STALE_SECONDS * 4) + 8):
        world.clock.advance(0.25)
        if tick % 20 == 0:  # an initiation every 5 s (two now and then), never a handshake
            world.wg.receive("key-b", INITIATION_BYTES * (1 + tick % 40 // 20))
        if world.keeper.tick():
            demoted_at = world.clock.now - START
            break
    assert demoted_at == pytest.approx(STALE_SECONDS, abs=0.3)
    assert world.wg.allowed("key-b") == ()


def test_initiations_that_complete_a_handshake_are_a_sign_of_life(world: World) -> None:
    world.promoted(peer())
    for second in range(1, int(STALE_SECONDS * 3)):
        world.clock.advance(1)
        if second % 5 == 0:  # a new session each time: the peer is there
            world.wg.receive("key-b", INITIATION_BYTES)
            world.wg.handshake("key-b", world.clock.now)
        assert not world.keeper.tick()
    assert world.wg.allowed("key-b") == ("100.64.0.3/32",)


def test_no_direct_path_before_the_member_firewall_allows_it() -> None:
    wg, clock = FakeWireGuard(), Clock()
    keeper = PathKeeper(wg, HUB, keepalive=5, clock=clock, jitter=lambda: 0.0)
    keeper.upsert(peer())
    wg.handshake("key-b", clock.now)
    clock.advance(0.25)
    assert not keeper.tick() and wg.allowed("key-b") == ()
    keeper.allow_direct(True)
    assert keeper.tick() and wg.allowed("key-b") == ("100.64.0.3/32",)


def test_direct_peers_go_relayed_when_the_firewall_fails_and_back_when_it_loads(
    world: World,
) -> None:
    world.promoted(peer())
    readds = [c for c in world.wg.calls if c[0] == "readd"]
    world.keeper.allow_direct(False)
    assert world.wg.allowed("key-b") == ()
    assert not world.keeper.paths()[0].direct
    for _ in range(int(TRY_SECONDS * 8)):  # held back, however fresh its handshake
        world.clock.advance(0.25)
        world.wg.receive("key-b")
        world.wg.handshake("key-b", world.clock.now)
        assert not world.keeper.tick()
    assert world.wg.allowed("key-b") == ()
    assert [c for c in world.wg.calls if c[0] == "readd"] == readds  # its session kept
    world.keeper.allow_direct(True)
    world.clock.advance(0.25)
    assert world.keeper.tick() and world.wg.allowed("key-b") == ("100.64.0.3/32",)


def test_a_failed_hold_back_is_tried_again_at_the_next_tick(world: World) -> None:
    world.promoted(peer())
    world.wg.broken.add("key-b")
    world.keeper.allow_direct(False)
    assert world.wg.allowed("key-b") == ("100.64.0.3/32",)
    world.wg.broken.clear()
    world.clock.advance(0.25)
    assert world.keeper.tick()
    assert world.wg.allowed("key-b") == ()


@pytest.mark.parametrize(
    ("public_key", "overlay_ip"),
    [
        (OWN, "100.64.0.3"),  # this device's own key: WireGuard would ignore it
        ("", "100.64.0.3"),
        ("key-x", ""),
        ("key-x", "not-an-ip"),
        ("key-x", "fd00::3"),
        ("key-x", "10.0.0.3"),  # outside the overlay
        ("key-x", "100.64.0.1"),  # the hub's
        ("key-x", "100.64.0.9"),  # ours
    ],
)
def test_a_peer_that_cannot_be_ours_is_refused_and_logged_once(
    world: World, caplog: pytest.LogCaptureFixture, public_key: str, overlay_ip: str
) -> None:
    bad = replace(peer("x"), public_key=public_key, overlay_ip=overlay_ip)
    world.keeper.upsert(bad)
    world.keeper.replace([bad, peer("c", ip="100.64.0.4")])
    world.keeper.upsert(bad)
    assert [p.name for p in world.keeper.peers()] == ["c"]
    assert all(call[1] in ("key-c",) for call in world.wg.calls)
    assert len([r for r in caplog.records if "ignoring peer 'x'" in r.message]) == 1


def test_a_peer_whose_address_turns_bad_is_taken_off_wireguard(world: World) -> None:
    world.promoted(peer())
    world.keeper.upsert(peer(ip="100.64.0.1"))
    assert "key-b" not in world.wg.peers_by_key and world.keeper.peers() == []


def test_replace_removes_departed_peers_and_leftovers_but_never_the_hub(world: World) -> None:
    world.wg.peers_by_key["key-old"] = PeerStatus("key-old", "", ("100.64.0.9/32",), 0, 0, 0)
    world.keeper.upsert(peer("b"))
    world.keeper.upsert(peer("c", ip="100.64.0.4"))
    world.keeper.replace([peer("c", ip="100.64.0.4"), peer("d", ip="100.64.0.5")])
    assert set(world.wg.peers_by_key) == {HUB, "key-c", "key-d"}
    assert [p.name for p in world.keeper.peers()] == ["c", "d"]


def test_the_hub_is_never_managed(world: World) -> None:
    hub = replace(peer("hub"), public_key=HUB)
    world.keeper.upsert(hub)
    world.keeper.remove(HUB)
    world.keeper.replace([hub])
    assert world.wg.peers_by_key[HUB].allowed_ips == ("100.64.0.0/16",)
    assert all(call[1] != HUB for call in world.wg.calls)


def test_remove_takes_a_direct_peer_off_wireguard_at_once(world: World) -> None:
    world.promoted(peer())
    world.keeper.remove("key-b")
    assert "key-b" not in world.wg.peers_by_key
    assert world.keeper.paths() == []
    assert not world.keeper.tick()


def test_close_removes_every_peer_it_added_and_keeps_the_hub(world: World) -> None:
    world.promoted(peer())
    world.keeper.upsert(peer("c", ip="100.64.0.4"))
    world.keeper.close()
    assert set(world.wg.peers_by_key) == {HUB}


def test_paths_carry_what_wireguard_reports(world: World) -> None:
    world.promoted(peer())
    world.wg.receive("key-b", 100)
    world.keeper.tick()
    [path] = world.keeper.paths()
    assert path == mesh_pb2.PeerPath(
        public_key="key-b",
        direct=True,
        endpoint="198.51.100.3:51820",
        last_handshake=int(START),
        rx_bytes=100,
    )


def test_a_known_peer_comes_from_the_hubs_message() -> None:
    message = mesh_pb2.MeshPeer(
        node_id="n1",
        name="w1",
        role="worker",
        public_key="k",
        overlay_ip="100.64.0.2",
        endpoints=["198.51.100.2:51820"],
        labels={"gpu": "a100"},
    )
    assert KnownPeer.from_proto(message) == KnownPeer(
        "n1", "w1", "worker", "k", "100.64.0.2", ("198.51.100.2:51820",), {"gpu": "a100"}
    )


def test_keepalive_must_be_on() -> None:
    with pytest.raises(InvalidInput, match="keepalive"):
        PathKeeper(FakeWireGuard(), HUB, keepalive=0)


def test_wg_set_arguments_name_only_the_fields_given() -> None:
    assert peer_arguments("k", (), "", None) == ["peer", "k", "allowed-ips", ""]
    assert peer_arguments("k", None, "1.2.3.4:5", 0) == [
        "peer",
        "k",
        "endpoint",
        "1.2.3.4:5",
        "persistent-keepalive",
        "off",
    ]


def test_the_dump_carries_persistent_keepalive() -> None:
    line = "k\t(none)\t1.2.3.4:5\t(none)\t0\t0\t148\t5"
    assert parse_dump_line(line) == PeerStatus("k", "1.2.3.4:5", (), 0, 0, 148, 5)
    assert parse_dump_line(line[: -len("5")] + "off").persistent_keepalive == 0


def test_a_dump_line_with_a_field_that_is_not_a_number_is_a_system_failure() -> None:
    with pytest.raises(SystemFailure, match="unexpected `wg show dump` line"):
        parse_dump_line("k\t(none)\t1.2.3.4:5\t(none)\tsoon\t0\t148\t5")


def test_a_wg_that_hangs_is_a_system_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(command: list[str], stdin: str | None = None, check: bool = True) -> str:
        raise subprocess.TimeoutExpired(command, 30)

    monkeypatch.setattr(wireguard, "run", hang)
    with pytest.raises(SystemFailure, match="did not finish within 30 s"):
        WireGuardInterface("hmtest0").peers()


def test_re_adds_go_in_one_wg_set_command(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []

    def record(command: list[str], stdin: str | None = None, check: bool = True) -> str:
        commands.append(command)
        return ""

    monkeypatch.setattr(wireguard, "run", record)
    WireGuardInterface("hmtest0").readd_peers([("K1", "1.2.3.4:5"), ("K2", "")], 25)
    assert [" ".join(command) for command in commands] == [
        "wg set hmtest0"
        " peer K1 remove peer K1 endpoint 1.2.3.4:5 persistent-keepalive 25"
        " peer K2 remove peer K2 persistent-keepalive 25"
    ]
