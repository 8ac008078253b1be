"""PeerSync: updates applied to a (fake) PathKeeper and the member firewall (fake nft at the
boundary), peers.json, the reports; and the stream itself against an insecure gRPC hub on
loopback: acks, reconnect with a full replace, nothing undone while the hub is away, one
thread for every keeper call, cleanup on stop."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from hivemind_cluster.agent import join
from hivemind_cluster.agent.memberfw import MemberFirewall
from hivemind_cluster.agent.peers import Keeper, PeerApplier, PeerSync
from hivemind_cluster.agent.peertrack import KnownPeer
from hivemind_cluster.agent.peerview import known_peers
from hivemind_cluster.agent.service import stop_peer_sync
from hivemind_cluster.agent.state import AgentSettings
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.core.names import CA_CERT, TLS_KEY
from hivemind_cluster.mesh.policy import default_policy
from hivemind_cluster.protos import mesh_pb2, mesh_pb2_grpc
from tests.support.enrollments import lab_enrollment

ME = lab_enrollment(node_id="n-me", name="me", overlay_ip="100.64.0.9", interface="hmtest0")
OPERATOR = mesh_pb2.MeshPeer(
    node_id="n-op", name="op", role="operator", public_key="op-key", overlay_ip="100.64.0.2"
)
WORKER = mesh_pb2.MeshPeer(
    node_id="n-w", name="w2", role="worker", public_key="w-key", overlay_ip="100.64.0.3"
)
SELF = mesh_pb2.MeshPeer(
    node_id="n-me", name="me", role="worker", public_key="me-key", overlay_ip="100.64.0.9"
)
POLICY = default_policy(50051, 8080).to_proto()


def full(revision: int, *peers: mesh_pb2.MeshPeer) -> mesh_pb2.PeerUpdate:
    return mesh_pb2.PeerUpdate(
        revision=revision, full=True, peers=peers, policy=POLICY, self=SELF, keepalive=15
    )


class FakeKeeper:
    """Records every call and the thread it came on."""

    def __init__(self, keepalive: int) -> None:
        self.keepalive = keepalive
        self.known: dict[str, KnownPeer] = {}
        self.calls: list[tuple[str, ...]] = []
        self.threads: set[str] = set()
        self.changed = False
        self.direct_allowed = False
        self.explode = False  # the next tick raises something no HiveMindError

    def allow_direct(self, allowed: bool) -> None:
        self.direct_allowed = allowed
        self._record("allow_direct", str(allowed))

    def _record(self, *call: str) -> None:
        self.calls.append(call)
        self.threads.add(threading.current_thread().name)

    def replace(self, peers: Iterable[KnownPeer]) -> None:
        self.known = {p.public_key: p for p in peers}
        self._record("replace", *sorted(self.known))

    def upsert(self, peer: KnownPeer) -> None:
        self.known[peer.public_key] = peer
        self._record("upsert", peer.public_key)

    def remove(self, public_key: str) -> None:
        self.known.pop(public_key, None)
        self._record("remove", public_key)

    def tick(self) -> bool:
        self.threads.add(threading.current_thread().name)
        if self.explode:
            self.explode = False
            raise RuntimeError("a bug in the keeper")
        changed, self.changed = self.changed, False
        return changed

    def paths(self) -> list[mesh_pb2.PeerPath]:
        self.threads.add(threading.current_thread().name)
        return [mesh_pb2.PeerPath(public_key=k, direct=True) for k in sorted(self.known)]

    def peers(self) -> list[KnownPeer]:
        self.threads.add(threading.current_thread().name)
        return list(self.known.values())

    def close(self) -> None:
        self._record("close")


def changes_of(keeper: FakeKeeper) -> list[tuple[str, ...]]:
    """The keeper's calls that change its peers."""
    return [call for call in keeper.calls if call[0] != "allow_direct"]


class Keepers:
    """The keeper factory: every keeper it made."""

    def __init__(self) -> None:
        self.made: list[FakeKeeper] = []

    def __call__(self, keepalive: int) -> Keeper:
        self.made.append(FakeKeeper(keepalive))
        return self.made[-1]


class FakeNft:
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.removed = 0
        self.refuse = False

    def load(self, interface: str, ruleset: str) -> None:
        if self.refuse:
            raise SystemFailure("nft: syntax error")
        self.loaded.append(ruleset)

    def unload(self, interface: str) -> None:
        self.removed += 1

    def firewall(self) -> MemberFirewall:
        return MemberFirewall(ME.interface, load=self.load, unload=self.unload)


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(state_dir=str(tmp_path))


def applier_for(settings: AgentSettings) -> tuple[PeerApplier, Keepers, FakeNft]:
    keepers, nft = Keepers(), FakeNft()
    return PeerApplier(settings, ME, keepers, nft.firewall(), clock=lambda: 42.0), keepers, nft


def test_a_full_update_replaces_loads_the_policy_and_records_the_peers(
    settings: AgentSettings,
) -> None:
    applier, keepers, nft = applier_for(settings)
    applier.apply(full(7, OPERATOR, WORKER))
    (keeper,) = keepers.made
    assert keeper.keepalive == 15  # the hub's
    assert keeper.calls == [("replace", "op-key", "w-key"), ("allow_direct", "True")]
    (ruleset,) = nft.loaded
    assert "100.64.0.2" in ruleset and "100.64.0.3" in ruleset and "100.64.0.1" in ruleset
    assert applier.revision == 7
    state = known_peers(settings.path)
    assert state["revision"] == 7 and state["time"] == 42.0
    assert [p["name"] for p in state["peers"]] == ["op", "w2"]
    assert state["peers"][0]["role"] == "operator"


def test_a_delta_removes_then_upserts_and_reloads_only_a_changed_ruleset(
    settings: AgentSettings,
) -> None:
    applier, keepers, nft = applier_for(settings)
    applier.apply(full(1, OPERATOR, WORKER))
    applier.apply(mesh_pb2.PeerUpdate(revision=2, removed=["w-key"]))
    moved = mesh_pb2.MeshPeer()
    moved.CopyFrom(OPERATOR)
    moved.endpoints.append("203.0.113.5:4000")  # the policy does not look at endpoints
    applier.apply(mesh_pb2.PeerUpdate(revision=3, peers=[moved]))
    (keeper,) = keepers.made
    assert changes_of(keeper)[1:] == [
        ("remove", "w-key"),
        ("upsert", "op-key"),
    ]
    assert len(nft.loaded) == 2 and "100.64.0.3" not in nft.loaded[1]
    assert applier.revision == 3
    assert [p["endpoints"] for p in known_peers(settings.path)["peers"]] == [["203.0.113.5:4000"]]


def test_no_table_is_loaded_before_a_policy_arrives(settings: AgentSettings) -> None:
    applier, keepers, nft = applier_for(settings)
    applier.apply(mesh_pb2.PeerUpdate(revision=1, full=True, peers=[OPERATOR]))
    assert nft.loaded == [] and applier.revision == 1
    assert not keepers.made[0].direct_allowed  # no firewall, no direct paths


def test_a_policy_this_agent_refuses_keeps_the_previous_one(settings: AgentSettings) -> None:
    applier, _, nft = applier_for(settings)
    applier.apply(full(1, OPERATOR))
    bad = mesh_pb2.Policy(rules=[mesh_pb2.PolicyRule(sources=["wroker"], destinations=["*"])])
    applier.apply(mesh_pb2.PeerUpdate(revision=2, policy=bad, peers=[WORKER]))
    assert applier.policy is not None and applier.policy.digest() == POLICY.digest
    assert applier.revision == 2 and len(nft.loaded) == 2  # the new peer, the old policy


def test_a_firewall_nft_refuses_applies_the_peers_all_relayed_until_it_loads(
    settings: AgentSettings, caplog: pytest.LogCaptureFixture
) -> None:
    applier, keepers, nft = applier_for(settings)
    applier.apply(full(1, OPERATOR))
    (keeper,) = keepers.made
    assert keeper.direct_allowed
    nft.refuse = True
    applier.apply(mesh_pb2.PeerUpdate(revision=2, peers=[WORKER]))
    applier.apply(mesh_pb2.PeerUpdate(revision=3, peers=[WORKER]))
    assert applier.revision == 3 and keeper.known.keys() == {"op-key", "w-key"}
    assert not keeper.direct_allowed  # the hub's forwarding filter is the only one left
    refusals = [r.message for r in caplog.records if "could not be loaded" in r.message]
    assert refusals == [
        "the member firewall could not be loaded: nft: syntax error; direct paths are off, "
        "every peer goes through the hub (which enforces the policy)"
    ]
    nft.refuse = False
    applier.apply(mesh_pb2.PeerUpdate(revision=4))
    assert len(nft.loaded) == 2 and keeper.direct_allowed


def test_without_nft_no_path_goes_direct(settings: AgentSettings) -> None:
    def missing(interface: str, ruleset: str) -> None:
        raise SystemFailure("nft is not installed, so the overlay policy cannot be enforced")

    keepers = Keepers()
    firewall = MemberFirewall(ME.interface, load=missing, unload=lambda interface: None)
    applier = PeerApplier(settings, ME, keepers, firewall)
    applier.apply(full(1, OPERATOR, WORKER))
    assert not keepers.made[0].direct_allowed and applier.revision == 1


def test_a_keepalive_wireguard_cannot_take_is_clamped(
    settings: AgentSettings, caplog: pytest.LogCaptureFixture
) -> None:
    applier, keepers, _ = applier_for(settings)
    update = full(1, OPERATOR)
    update.keepalive = 70000
    applier.apply(update)
    assert keepers.made[0].keepalive == 65535 and applier.revision == 1
    assert any("out of range" in r.message for r in caplog.records)


def test_a_new_session_acks_nothing_until_it_applied_something(settings: AgentSettings) -> None:
    applier, _, _ = applier_for(settings)
    applier.apply(full(9, OPERATOR))
    applier.new_session()
    assert applier.report([]).applied_revision == 0


def test_the_policy_table_goes_even_when_the_stream_is_stuck() -> None:
    class Stuck:
        def __init__(self, stops: bool) -> None:
            self.stops = stops

        def stop(self) -> bool:
            return self.stops

    removed: list[str] = []
    stop_peer_sync(Stuck(True), "hm0", removed.append)  # type: ignore[arg-type]
    assert removed == []
    stop_peer_sync(Stuck(False), "hm0", removed.append)  # type: ignore[arg-type]
    assert removed == ["hm0"]


def test_leave_removes_the_policy_table(
    settings: AgentSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ME.save(settings.path)
    for name in (CA_CERT, TLS_KEY):
        (settings.path / name).write_bytes(b"")
    removed: list[str] = []
    where = "hivemind_cluster.agent.join."
    monkeypatch.setattr(where + "enroll_client.leave", lambda *args: None)
    monkeypatch.setattr(where + "load_tls_key", lambda data: None)
    monkeypatch.setattr(where + "stop_service", lambda settings: None)
    monkeypatch.setattr(where + "WireGuardInterface.down", lambda self: None)
    monkeypatch.setattr(where + "policyrules.remove", removed.append)
    assert join.leave(settings)["deregistered"]
    assert removed == [ME.interface] and not settings.path.exists()


def test_close_removes_the_keepers_peers_and_the_table(settings: AgentSettings) -> None:
    applier, keepers, nft = applier_for(settings)
    applier.close()
    assert nft.removed == 1  # a table left by a crash goes too
    applier.apply(full(1, OPERATOR))
    applier.close()
    assert keepers.made[0].calls[-1] == ("close",) and nft.removed == 2


# ---- the stream --------------------------------------------------------------------------


class FakeHub(mesh_pb2_grpc.MeshServicer):
    """Each Peers stream takes its updates from a queue of its own (None ends it) and
    records the reports."""

    def __init__(self) -> None:
        self.streams: queue.Queue[queue.Queue[mesh_pb2.PeerUpdate | None]] = queue.Queue()
        self.reports: list[mesh_pb2.MemberReport] = []
        self.changed = threading.Condition()
        self.opened: list[queue.Queue[mesh_pb2.PeerUpdate | None]] = []

    def Peers(
        self, request_iterator: Iterator[mesh_pb2.MemberReport], context: grpc.ServicerContext
    ) -> Iterator[mesh_pb2.PeerUpdate]:
        updates: queue.Queue[mesh_pb2.PeerUpdate | None] = queue.Queue()
        threading.Thread(target=self._read, args=(request_iterator,), daemon=True).start()
        self.streams.put(updates)
        self.opened.append(updates)
        while (update := updates.get()) is not None:
            yield update

    def _read(self, reports: Iterator[mesh_pb2.MemberReport]) -> None:
        try:
            for report in reports:
                with self.changed:
                    self.reports.append(report)
                    self.changed.notify_all()
        except grpc.RpcError:
            pass

    def end_streams(self) -> None:
        """End every stream's generator: a stopped server leaves them waiting, and the
        interpreter's exit waits for the server threads that run them."""
        for updates in self.opened:
            updates.put(None)

    def wait_for(self, condition: Callable[[mesh_pb2.MemberReport], bool]) -> Any:
        with self.changed:
            assert self.changed.wait_for(
                lambda: any(condition(r) for r in self.reports), timeout=30
            ), self.reports[-3:]


def serve(hub: FakeHub, address: str = "127.0.0.1:0") -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    mesh_pb2_grpc.add_MeshServicer_to_server(hub, server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_the_stream_applies_acks_survives_the_hub_going_away_and_cleans_up(
    settings: AgentSettings,
) -> None:
    hub = FakeHub()
    server, port = serve(hub)
    keepers, nft = Keepers(), FakeNft()
    sync = PeerSync(
        settings,
        ME,
        Identity("n-me", b"", b"", b"", f"127.0.0.1:{port}"),
        keepers,
        firewall=nft.firewall(),
        channel_factory=lambda identity: grpc.aio.insecure_channel(identity.pool_address),
        endpoints=lambda: ["192.0.2.9:51820"],
    ).start()
    try:
        stream = hub.streams.get(timeout=30)
        hub.wait_for(lambda r: r.applied_revision == 0 and r.endpoints == ["192.0.2.9:51820"])
        stream.put(full(1, OPERATOR, WORKER))
        hub.wait_for(lambda r: r.applied_revision == 1 and len(r.paths) == 2)
        stream.put(mesh_pb2.PeerUpdate(revision=2, removed=["w-key"]))
        hub.wait_for(lambda r: r.applied_revision == 2)
        keeper = keepers.made[0]
        assert changes_of(keeper) == [("replace", "op-key", "w-key"), ("remove", "w-key")]
        keeper.explode = True  # a bug in a tick: logged, and the ticks go on
        wait_until(lambda: not keeper.explode)
        keeper.changed = True  # a path changes: reported without waiting for the 2 s
        hub.wait_for(lambda r: r.applied_revision == 2 and len(r.paths) == 1)

        server.stop(grace=None).wait()  # the hub goes away: nothing is undone
        wait_until(lambda: not sync.connected)
        assert changes_of(keeper)[-1] == ("remove", "w-key") and len(nft.loaded) == 2
        with hub.changed:
            hub.reports.clear()
        server, _ = serve(hub, f"127.0.0.1:{port}")
        stream = hub.streams.get(timeout=30)
        hub.wait_for(lambda r: True)  # the report at connect
        assert {r.applied_revision for r in hub.reports} == {0}  # not the old hub's 2
        stream.put(full(5, OPERATOR))
        hub.wait_for(lambda r: r.applied_revision == 5)
        assert changes_of(keeper)[-1] == ("replace", "op-key") and keeper.direct_allowed
        assert keepers.made == [keeper]
        assert keeper.threads == {"path-keeper_0"}  # one thread owns the keeper
    finally:
        sync.stop()
        hub.end_streams()
        server.stop(grace=None)
    assert keeper.calls[-1:] == [("close",)] and nft.removed == 1
    assert sync._thread is not None and not sync._thread.is_alive()
