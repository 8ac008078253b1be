"""What the hub accepts from members and from its own records before it hands anything out
(mesh/peermembers.py, mesh/pathreports.py, mesh/peerpolicy.py): endpoints, report sizes,
node records, path records, the recorded policy, and the spacing of endpoint changes."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

import pytest

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.mesh import peermembers
from hivemind_cluster.mesh.pathreports import FIGURES_UP_TO, path_record
from hivemind_cluster.mesh.peermembers import (
    EndpointTurns,
    capped,
    checked_endpoints,
    member_of_record,
)
from hivemind_cluster.mesh.peerpolicy import policy_of_record, policy_record
from hivemind_cluster.protos import mesh_pb2

OVERLAY = ipaddress.IPv4Network("100.64.0.0/16")
RECORD: dict[str, str | None] = {
    "id": "n1",
    "name": "gpu-box",
    "role": "worker",
    "overlay_ip": "100.64.0.2",
    "wg_public_key": "key1",
    "state": "active",
    "labels": '{"tier": "db"}',
}


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.2:²",  # "²".isdigit() is True, int("²") raises
        "10.0.0.2:٣",  # an Arabic-Indic digit: the same
        "10.0.0.2:0",
        "10.0.0.2:65536",
        "10.0.0.2:123456",
        "10.0.0.2:+80",
        "10.0.0.2: 80",
        "10.0.0.2",
        "",
        "127.0.0.1:51820",
        "169.254.1.1:51820",
        "224.0.0.1:51820",
        "255.255.255.255:51820",
        "0.0.0.0:51820",
        "100.64.3.4:51820",  # inside the overlay
        "[::1]:51820",
        "010.0.0.2:51820",
        "gpu-box:51820",
    ],
)
def test_an_endpoint_that_may_not_be_handed_out_is_refused(text: str) -> None:
    assert checked_endpoints([text], OVERLAY) == ((), (text,))


def test_good_endpoints_are_kept_each_once_and_at_most_max() -> None:
    texts = ["192.168.1.5:51820", "198.51.100.7:00080", "192.168.1.5:51820"]
    texts += [f"198.51.100.{i}:1" for i in range(20)]
    kept, refused = checked_endpoints(texts, OVERLAY)
    assert kept[:2] == ("192.168.1.5:51820", "198.51.100.7:80") and not refused
    assert len(kept) == peermembers.MAX_ENDPOINTS


def test_a_report_is_cut_before_anything_loops_over_it() -> None:
    report = mesh_pb2.MemberReport(
        endpoints=[f"10.0.0.1:{p}" for p in range(1, 100_000)],
        paths=[mesh_pb2.PeerPath(public_key=str(i)) for i in range(5000)],
    )
    capped(report, 40)
    assert (len(report.endpoints), len(report.paths)) == (2 * peermembers.MAX_ENDPOINTS, 40)


def test_a_node_record_becomes_a_member_only_when_it_is_whole() -> None:
    member = member_of_record(RECORD, "198.51.100.7:51820", ("10.0.0.2:51820",))
    assert member is not None and member.labels == (("tier", "db"),)
    assert member.endpoints() == ["198.51.100.7:51820", "10.0.0.2:51820"]
    assert member_of_record(RECORD | {"state": "revoked"}, "", ()) is None
    cases: list[tuple[dict[str, str | None], str]] = [
        ({"labels": "{not json"}, "corrupt"),
        ({"labels": '["a"]'}, "labels"),
        ({"labels": '{"a": 1}'}, "labels"),
        ({"overlay_ip": "100.64.0.2; drop"}, "corrupt"),
        ({"role": "hub"}, "role"),
        ({"name": None, "wg_public_key": ""}, "lacks name, wg_public_key"),
    ]
    for broken, message in cases:
        with pytest.raises(InvalidInput, match=message):
            member_of_record(RECORD | broken, "", ())


def test_a_path_record_names_known_members_only_and_keeps_figures_when_few() -> None:
    ids = {f"key{i}": f"n{i}" for i in range(1, 40)}
    paths = [
        mesh_pb2.PeerPath(public_key="key2", direct=True, endpoint="198.51.100.2:1", rx_bytes=7),
        mesh_pb2.PeerPath(public_key="key3", endpoint="127.0.0.1:1"),
        mesh_pb2.PeerPath(public_key="unknown\x1b[2J", direct=True),
        mesh_pb2.PeerPath(public_key="key1", direct=True),  # the member itself
    ]
    report = mesh_pb2.MemberReport(applied_revision=9, endpoints=["1.2.3.4:²"], paths=paths)
    record = path_record("n1", report, ids, OVERLAY, 100.0)
    assert record == {
        "time": 100.0,
        "applied_revision": 9,
        "endpoints": [],
        "direct": ["n2"],
        "relayed": ["n3"],
        "figures": {
            "n2": {"endpoint": "198.51.100.2:1", "last_handshake": 0, "rx_bytes": 7, "tx_bytes": 0},
            "n3": {"endpoint": "", "last_handshake": 0, "rx_bytes": 0, "tx_bytes": 0},
        },
    }
    many = [mesh_pb2.PeerPath(public_key=f"key{i}") for i in range(2, FIGURES_UP_TO + 3)]
    big = path_record("n1", mesh_pb2.MemberReport(paths=many), ids, OVERLAY, 100.0)
    assert len(big["relayed"]) == FIGURES_UP_TO + 1 and big["figures"] == {}
    assert len(json.dumps(big)) < 20 * (FIGURES_UP_TO + 1) + 120  # ids, not a peer list


def test_a_corrupt_recorded_policy_is_one_clear_error() -> None:
    good: dict[str, Any] = {"digest": "d", "source": "default", "rules": [], "error": ""}
    cases: list[dict[str, Any]] = [
        {"digest": "d"},
        good | {"rules": [{"sources": ["*"]}]},
        good | {"rules": "everything"},
        good | {"rules": [{"sources": ["*"], "destinations": ["x"], "ports": [], "line": 1}]},
    ]
    for corrupt in cases:
        with pytest.raises(InvalidInput, match=r"policy recorded in Redis \(hm:policy\)"):
            policy_of_record(corrupt)
    with pytest.raises(InvalidInput, match="is corrupt"):
        policy_record({"digest": "d", "rules": "[{"})


def test_endpoint_changes_take_turns_and_the_latest_one_lands() -> None:
    applied: list[tuple[str, tuple[str, ...]]] = []
    now = [1000.0]

    def apply(node_id: str, endpoints: tuple[str, ...]) -> bool:
        applied.append((node_id, endpoints))
        return True

    async def scenario() -> None:
        turns = EndpointTurns(apply, clock=lambda: now[0])
        turns.offer("a", ("e1",), ())
        turns.offer("a", ("e2",), ("e1",))
        turns.offer("a", ("e3",), ("e1",))
        turns.offer("b", ("f1",), ())  # another member has its own turns
        assert applied == [("a", ("e1",)), ("b", ("f1",))]
        assert turns.waiting == {"a": ("e3",)}
        now[0] += peermembers.ENDPOINT_INTERVAL
        turns.turn("a")  # what the timer calls
        assert applied[-1] == ("a", ("e3",)) and not turns.waiting
        turns.offer("a", ("e3",), ("e3",))  # no change: nothing waits, nothing applied
        turns.offer("b", ("f2",), ("f1",))  # b's interval is over: at once
        turns.offer("a", ("e4",), ("e3",))  # a changed just now: it waits
        assert len(applied) == 4 and set(turns.timers) == {"a"}
        turns.forget("a")  # a left: its waiting change goes with it
        assert not turns.timers and not turns.waiting and len(applied) == 4
        turns.close()

    asyncio.run(scenario())
