"""The hub's peer distributor (mesh/peering.py) against members that misbehave and records
that went bad, on a real Redis: a member flooding endpoint changes or streams, oversized
and malformed reports, a corrupt node record, a hub.toml caught half-written, a failed
load of the hub's rules. Each case must cost the one at fault, never everyone else.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hivemind_cluster.core import redisdb
from hivemind_cluster.core.errors import Conflict, SystemFailure
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants, peering, peermembers, peerpolicy
from hivemind_cluster.mesh.peerpolicy import PolicyFile
from hivemind_cluster.mesh.policy import Policy, load_policy
from hivemind_cluster.protos import mesh_pb2
from tests.support.meshkit import WAIT, Mesh, in_a_mesh, members_are, next_update, run_in_mesh

pytestmark = pytest.mark.privileged
POLICY = '[[policy.allow]]\nfrom = ["worker"]\nto = ["label:tier=db"]\nports = ["tcp/5432"]\n'
MORE = '\n[[policy.allow]]\nfrom = ["operator"]\nto = ["*"]\n'


def endpoints_report(*endpoints: str) -> mesh_pb2.MemberReport:
    return mesh_pb2.MemberReport(endpoints=list(endpoints))


async def two_members(mesh: Mesh) -> None:
    mesh.join("a")
    mesh.join("b")
    await mesh.settled(lambda hub: len(hub.members) == 2)


def test_endpoint_changes_in_a_loop_move_once_per_turn_and_the_last_one_lands(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peermembers, "ENDPOINT_INTERVAL", 3.0)

    async def body(mesh: Mesh) -> None:
        await two_members(mesh)
        subscription = mesh.distributor.subscribe("a")
        assert await next_update(subscription) is not None
        before = mesh.distributor.revision
        for port in range(1001, 1101):
            await mesh.distributor.report("b", endpoints_report(f"10.0.0.2:{port}"))
        assert mesh.distributor.revision == before + 1  # the first at once, the others wait
        assert mesh.distributor.members["b"].reported == ("10.0.0.2:1001",)
        seen: list[list[str]] = []
        while seen[-1:] != [["10.0.0.2:1100"]]:
            update = await next_update(subscription)
            assert update is not None
            seen += [list(peer.endpoints) for peer in update.peers]
        assert seen in ([["10.0.0.2:1001"], ["10.0.0.2:1100"]], [["10.0.0.2:1100"]])
        assert mesh.distributor.revision == before + 2

    run_in_mesh(redis_server, tmp_path, body)


@in_a_mesh
async def test_a_newer_stream_of_a_node_ends_its_older_one(mesh: Mesh) -> None:
    await two_members(mesh)
    older = mesh.distributor.subscribe("a")
    assert await next_update(older) is not None
    waiting = asyncio.create_task(older.next_update())
    await asyncio.sleep(0.05)  # it waits for a change
    newer = mesh.distributor.subscribe("a")
    with pytest.raises(Conflict, match="another peer stream"):
        await asyncio.wait_for(waiting, WAIT)
    full = await next_update(newer)
    assert full is not None and full.full
    assert list(mesh.distributor.subscriptions) == ["a"]
    older.close()  # the service closes the ended one: the newer one stays
    assert mesh.distributor.subscriptions == {"a": newer}


@in_a_mesh
async def test_a_report_is_cut_to_size_and_bad_endpoints_are_left_out(mesh: Mesh) -> None:
    await two_members(mesh)
    bad = ["10.0.0.2:²", "10.0.0.2:0", "10.0.0.2:65536", "127.0.0.1:51820", "169.254.3.4:1"]
    bad += ["224.0.0.9:1", "255.255.255.255:1", "0.0.0.0:1", "100.64.0.9:1", "[::1]:1", "h:1"]
    good = ["10.0.0.2:51820", "198.51.100.7:4000"]
    paths = [mesh_pb2.PeerPath(public_key=f"k{i}") for i in range(10_000)]
    report = mesh_pb2.MemberReport(endpoints=[*bad, *good, *good * 100], paths=paths)
    await mesh.distributor.report("b", report)  # no traceback, whatever it holds
    assert mesh.distributor.members["b"].reported == tuple(good)
    pending = mesh.distributor.paths_pending["b"]
    assert (len(pending.endpoints), len(pending.paths)) == (2 * peermembers.MAX_ENDPOINTS, 2)


@in_a_mesh
async def test_path_records_keep_known_members_only(mesh: Mesh) -> None:
    await two_members(mesh)
    paths = [
        mesh_pb2.PeerPath(public_key="key-b", direct=True, endpoint="127.0.0.1:9", rx_bytes=5),
        mesh_pb2.PeerPath(public_key="<script>", direct=False, endpoint="198.51.100.9:1"),
    ]
    await mesh.distributor.report("a", mesh_pb2.MemberReport(applied_revision=4, paths=paths))
    await mesh.settled(lambda hub: bool(peering.reported_paths(mesh.client, ["a"])))
    record = peering.reported_paths(mesh.client, ["a"])["a"]
    assert (record["direct"], record["relayed"], record["applied_revision"]) == (["b"], [], 4)
    assert record["figures"] == {
        "b": {"endpoint": "", "last_handshake": 0, "rx_bytes": 5, "tx_bytes": 0}
    }
    assert "<script>" not in str(mesh.client.get(constants.PATHS.format(id="a")))


def test_a_failed_load_of_the_hub_rules_is_tried_again(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(peering, "FIREWALL_RETRY", 0.05)
    failures = [3]

    async def body(mesh: Mesh) -> None:
        def flaky(text: str) -> None:
            if failures[0]:
                failures[0] -= 1
                raise SystemFailure("`nft -f -` failed: Could not process rule")
            mesh.hub_rules.append(text)

        mesh.distributor.apply_hub_rules = flaky
        mesh.join("a")  # its address goes into the rules: a load is due, and fails 3 times
        await mesh.settled(lambda hub: "100.64.0.11" in mesh.hub_rules[-1])
        assert failures == [0]

    with caplog.at_level(logging.INFO, logger=peering.__name__):
        run_in_mesh(redis_server, tmp_path, body)
    logged = [r.getMessage() for r in caplog.records]
    assert sum("Could not process rule" in line for line in logged) == 1


def test_a_corrupt_node_record_leaves_out_that_node_only(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(mesh: Mesh) -> None:
        await two_members(mesh)
        mesh.client.hset(constants.NODE.format(id="b"), "labels", "{not json")
        mesh.client.set(constants.NODE.format(id="c"), "not a hash")
        mesh.client.zadd(constants.NODES, {"c": 0})
        mesh.join("d")
        for _ in range(3):  # the full reads every few seconds: one line per bad record
            await mesh.distributor.reload(None)
        assert set(mesh.distributor.members) == {"a", "d"}
        mesh.client.hset(constants.NODE.format(id="b"), "labels", redisdb.dumps({}))
        await mesh.distributor.reload(None)
        await mesh.settled(members_are({"a", "b", "d"}))

    with caplog.at_level(logging.ERROR, logger=peering.__name__):
        run_in_mesh(redis_server, tmp_path, body)
    logged = [r.getMessage() for r in caplog.records]
    assert sum("node b's record is corrupt" in line for line in logged) == 1
    assert sum("node c's record cannot be read" in line for line in logged) == 1


def test_hub_toml_is_applied_only_once_it_holds_still(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(mesh: Mesh) -> None:
        policy_file = PolicyFile(mesh.settings, mesh.db, mesh.policy_path)
        running = await policy_file.initial()  # no hub.toml: the default
        mesh.policy_path.write_text(POLICY[:40])  # an editor half-way through
        assert await policy_file.changed(running) is None  # may still be written: wait
        mesh.policy_path.write_text(POLICY)
        assert await policy_file.changed(running) is None  # changed since the last look
        rewritten = [False]

        def written_meanwhile(path: Path, *ports: int) -> Policy:
            read = load_policy(path, *ports)
            if not rewritten[0]:
                rewritten[0] = bool(path.write_text(POLICY + MORE))  # the writer goes on
            return read

        monkeypatch.setattr(peerpolicy, "load_policy", written_meanwhile)
        assert await policy_file.changed(running) is None  # changed while read: not used
        final = await policy_file.changed(running)
        assert final is not None and [r.line for r in final.rules if r.line] == [1, 6]
        assert (await peering.running_policy(mesh.db) or {})["error"] == ""  # none refused

    run_in_mesh(redis_server, tmp_path, body, start=False)
