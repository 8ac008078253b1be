"""The one node view (mesh/inventory.py) both ``hivemind-hub nodes`` and the web's mesh page
show: online, state, handshakes, traffic and paths computed once, unknowns left unknown."""

from __future__ import annotations

from typing import Any

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.cli import node_line
from hivemind_cluster.mesh.inventory import Member, Paths, Row, node_rows
from hivemind_cluster.mesh.wireguard import PeerStatus

NOW = 1_700_000_000.0
SETTINGS = HubSettings(state_dir="/nonexistent", name="hub-a")


def peer(key: str, seconds_ago: int, rx: int = 1 << 20, tx: int = 2 << 20) -> PeerStatus:
    handshake = int(NOW) - seconds_ago if seconds_ago >= 0 else 0
    return PeerStatus(key, "198.51.100.3:51820", ("100.64.0.2/32",), handshake, rx, tx)


def member(key: str, **fields: Any) -> Member:
    base: dict[str, Any] = {
        "id": f"n-{key}",
        "name": key,
        "role": "operator",
        "overlay_ip": "100.64.0.2",
        "wg_public_key": key,
    }
    return Member(**(base | fields))


def rows_by_name(members: list[Member], peers: list[PeerStatus] | None) -> dict[str, Row]:
    known = None if peers is None else {p.public_key: p for p in peers}
    rows = node_rows(SETTINGS, members, known, NOW, {"extra": 1})
    return {row["name"]: row for row in rows}


def test_the_hub_row_comes_first_and_is_online_while_its_interface_is_read() -> None:
    hub = node_rows(SETTINGS, [], {}, NOW, {"extra": 1})[0]
    assert hub == {
        "id": "hub",
        "name": "hub-a",
        "role": "hub",
        "overlay_ip": SETTINGS.hub_ip,
        "state": "active",
        "online": True,
        "last_handshake": None,
        "handshake_age": None,
        "rx_bytes": None,
        "tx_bytes": None,
        "direct_peers": None,
        "relayed_peers": None,
        "relayed_bytes": None,
        "path_report_age": None,
        "extra": 1,
    }
    assert node_rows(SETTINGS, [], None, NOW, {})[0]["online"] is False


def test_online_is_a_recent_handshake_unless_the_pool_connection_is_known() -> None:
    rows = rows_by_name(
        [
            member("fresh"),
            member("stale"),
            member("never"),
            member("gone", state="revoked"),
            member("worker", role="worker", connected=True),
            member("dropped", role="worker", connected=False),
        ],
        [
            peer("fresh", 7),
            peer("stale", 600),
            peer("never", -1),
            peer("gone", 7),
            peer("worker", 600),
            peer("dropped", 7),
        ],
    )
    online = {name: row["online"] for name, row in rows.items()}
    assert online == {
        "hub-a": True,
        "fresh": True,
        "stale": False,
        "never": False,
        "gone": False,  # retired: never online, whatever its tunnel says
        "worker": True,
        "dropped": False,
    }
    assert rows["fresh"]["handshake_age"] == 7 and rows["fresh"]["last_handshake"] == NOW - 7
    assert rows["never"]["last_handshake"] is None and rows["never"]["handshake_age"] is None


def test_unknown_traffic_is_none_never_zero() -> None:
    details = {"cpu_cores": 4}
    rows = rows_by_name([member("known", details=details), member("absent")], [peer("known", 7)])
    assert (rows["known"]["rx_bytes"], rows["known"]["tx_bytes"]) == (1 << 20, 2 << 20)
    assert rows["known"]["cpu_cores"] == 4
    assert (rows["absent"]["rx_bytes"], rows["absent"]["tx_bytes"]) == (None, None)
    unread = rows_by_name([member("known")], None)["known"]
    assert unread["rx_bytes"] is None and unread["online"] is False


def test_the_hub_table_prints_unknowns_as_dashes() -> None:
    rows = rows_by_name(
        [member("known"), member("absent"), member("gone", state="left")], [peer("known", 7)]
    )
    lines = {name: node_line(row) for name, row in rows.items()}
    shown = {n: (r["status"], r["handshake"], r["rx"], r["tx"]) for n, r in lines.items()}
    assert shown == {
        "hub-a": ("online", "-", "-", "-"),
        "known": ("online", "7s", "1 MiB", "2 MiB"),
        "absent": ("offline", "never", "-", "-"),
        "gone": ("left", "never", "-", "-"),
    }


def report(seconds_ago: float, **paths: bool) -> dict[str, Any]:
    """A member's path record as mesh/pathreports.py keeps it: peer name -> direct?"""
    direct = sorted(f"n-{name}" for name, is_direct in paths.items() if is_direct)
    relayed = sorted(f"n-{name}" for name, is_direct in paths.items() if not is_direct)
    return {"time": NOW - seconds_ago, "applied_revision": 3, "endpoints": [], "figures": {}} | {
        "direct": direct,
        "relayed": relayed,
    }


def test_direct_and_relayed_peers_are_the_names_a_fresh_report_gives() -> None:
    reported = {
        "n-a": report(1.5, c=True, b=True, d=False),
        "n-b": report(0.5, a=True),
        "n-lonely": report(2),
    }
    members = [member(name, overlay_ip=f"100.64.0.{i}") for i, name in enumerate("ab", 2)]
    registry = {"n-c": "c", "n-a": "not the listed name"}  # c: registered, not listed here
    rows = node_rows(
        SETTINGS,
        [*members, member("lonely"), member("silent")],
        {},
        NOW,
        {},
        Paths(reported, names=registry),
    )
    shown = {r["name"]: (r["direct_peers"], r["relayed_peers"], r["path_report_age"]) for r in rows}
    assert shown == {
        "hub-a": (None, None, None),
        "a": (["b", "c"], ["n-d"], 1.5),  # d: no longer registered, shown by its node id
        "b": (["a"], [], 0.5),
        "lonely": ([], [], 2),
        "silent": (None, None, None),  # no fresh report: unknown, not "no peers"
    }


def test_relayed_bytes_are_per_source_address_and_the_hub_shows_the_total() -> None:
    members = [
        member("a", overlay_ip="100.64.0.2"),
        member("b", overlay_ip="100.64.0.3"),
        member("quiet", overlay_ip="100.64.0.4"),
    ]
    counted = {"100.64.0.2": 3000, "100.64.0.3": 500, "100.64.0.99": 7}  # .99: a former member
    rows = node_rows(SETTINGS, members, {}, NOW, {}, Paths({}, counted))
    assert {r["name"]: r["relayed_bytes"] for r in rows} == {
        "hub-a": 3507,
        "a": 3000,
        "b": 500,
        "quiet": 0,  # counters read, nothing from it
    }
    unread = node_rows(SETTINGS, members, {}, NOW, {}, Paths({}, None))
    assert {r["relayed_bytes"] for r in unread} == {None}


def test_the_hub_table_counts_direct_and_relayed_peers() -> None:
    reported = {"n-a": report(1, b=True, c=False, d=False)}
    members = [member("a", overlay_ip="100.64.0.2"), member("silent", overlay_ip="100.64.0.3")]
    rows = node_rows(SETTINGS, members, {}, NOW, {}, Paths(reported, {"100.64.0.2": 5 << 20}))
    shown = {r["name"]: node_line(r) for r in rows}
    assert {n: (r["direct"], r["relayed"], r["via_hub"]) for n, r in shown.items()} == {
        "hub-a": ("-", "-", "5 MiB"),
        "a": ("1", "2", "5 MiB"),
        "silent": ("-", "-", "0 B"),
    }
