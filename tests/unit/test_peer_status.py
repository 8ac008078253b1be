"""What status shows of the peers (direct or relayed, from `wg show` and peers.json), in the
CLI's table and on the status page, and which of this host's addresses are endpoint
candidates."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from hivemind_cluster.agent.cli import peers_table
from hivemind_cluster.agent.endpoints import ARPHRD_NONE, candidate_addresses
from hivemind_cluster.agent.peerview import PEERS_FILE, known_peers, known_revision, peer_rows
from hivemind_cluster.agent.statushtml import render_html
from hivemind_cluster.agent.statuspage import status_json
from hivemind_cluster.mesh.wireguard import PeerStatus
from tests.unit.test_agent_status import NOW, STATUS, parse

KNOWN = {
    "revision": 4,
    "peers": [
        {"name": "w<1>", "role": "worker", "public_key": "k1", "overlay_ip": "100.64.0.2"},
        {"name": "op", "role": "operator", "public_key": "k2", "overlay_ip": "100.64.0.3"},
        {"name": "gone", "role": "worker", "public_key": "k3", "overlay_ip": "100.64.0.4"},
    ],
}
WIREGUARD = [
    PeerStatus("hub", "198.51.100.1:51820", ("100.64.0.0/16",), int(NOW) - 5, 10, 20),
    PeerStatus("k1", "198.51.100.2:51820", ("100.64.0.2/32",), int(NOW) - 3, 300, 400),
    PeerStatus("k2", "203.0.113.9:4500", (), 0, 0, 92),
    PeerStatus("leftover", "", (), 0, 0, 0),
]


def test_rows_say_direct_when_wireguard_routes_the_peer_itself() -> None:
    rows = {r.name: r for r in peer_rows(KNOWN, WIREGUARD)}
    assert list(rows) == ["gone", "op", "w<1>"]  # known peers only, by name
    assert rows["w<1>"].path == "direct" and rows["w<1>"].rx_bytes == 300
    assert rows["w<1>"].last_handshake == int(NOW) - 3
    assert rows["op"].path == "relayed" and rows["op"].endpoint == "203.0.113.9:4500"
    assert rows["op"].last_handshake is None and rows["op"].tx_bytes == 92
    assert rows["gone"].path == "relayed" and rows["gone"].endpoint == ""
    assert [r.path for r in peer_rows(KNOWN, None)] == ["relayed"] * 3  # interface down


def test_peers_json_missing_or_broken_means_none_known(tmp_path: Path) -> None:
    assert known_peers(tmp_path) == {}
    (tmp_path / PEERS_FILE).write_text("{half")
    assert known_peers(tmp_path) == {} and peer_rows({}, WIREGUARD) == []
    (tmp_path / PEERS_FILE).write_text(json.dumps(KNOWN))
    assert known_peers(tmp_path)["revision"] == 4


def test_the_cli_table_lists_each_peer_with_its_path() -> None:
    rows = [r.to_json() for r in peer_rows(KNOWN, WIREGUARD)]
    lines = peers_table(rows, 4, NOW).splitlines()
    assert lines[0] == "peers      3 (1 direct, 2 relayed), revision 4"
    (w1,) = [line for line in lines if "w<1>" in line]
    assert "direct" in w1 and "198.51.100.2:51820" in w1 and "handshake 3s ago" in w1
    assert "rx 300 B, tx 400 B" in w1
    (gone,) = [line for line in lines if "gone" in line]
    assert "relayed" in gone and "handshake never" in gone
    assert "none known yet" in peers_table([], 0, NOW)


def test_the_status_page_lists_the_peers_escaped() -> None:
    status = replace(STATUS, peers=tuple(peer_rows(KNOWN, WIREGUARD)))
    document = status_json(status)
    assert [p["path"] for p in document["peers"]] == ["relayed", "relayed", "direct"]
    json.dumps(document)
    page = render_html(document)
    assert "w<1>" not in page
    text = "".join(parse(page).text)
    assert "Peers" in text and "w<1>" in text and "198.51.100.2:51820" in text
    assert "direct" in text and "relayed" in text


class Address(NamedTuple):
    family: int
    address: str


def test_candidates_are_the_hosts_reachable_ipv4_addresses() -> None:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    addresses = {
        "lo": [Address(v4, "127.0.0.1")],
        "eth0": [Address(v4, "192.0.2.20"), Address(v6, "2001:db8::1"), Address(v4, "10.0.0.5")],
        "wlan0": [Address(v4, "169.254.3.3"), Address(v4, "10.0.0.5")],
        "hm0": [Address(v4, "100.64.0.9")],
        "wg1": [Address(v4, "10.9.0.1")],
        "docker0": [Address(v4, "172.17.0.1")],
        "br-1a2b": [Address(v4, "172.18.0.1")],
        "veth9": [Address(v4, "172.19.0.1")],
    }
    kinds = {name: 1 for name in addresses} | {"lo": 772, "wg1": ARPHRD_NONE}
    assert candidate_addresses(addresses, "hm0", kinds) == ["10.0.0.5", "192.0.2.20"]


def test_the_cli_table_never_sends_control_characters_to_the_terminal() -> None:
    known = {
        "revision": 1,
        "peers": [
            {
                "name": "evil\x1b]0;pwned\x07\nfake line",
                "role": "work\x1b[2Jer",
                "public_key": "k1",
                "overlay_ip": "100.64.0.2",
            }
        ],
    }
    wireguard = [PeerStatus("k1", "198.51.100.2:1\r\x1b[31m", ("100.64.0.2/32",), 0, 0, 0)]
    table = peers_table([r.to_json() for r in peer_rows(known, wireguard)], 1, NOW)
    assert "\x1b" not in table and "\x07" not in table and "\r" not in table
    (line,) = table.splitlines()[1:]  # one line for the peer, whatever its name holds
    assert "evil\\x1b]0;pwned\\x07\\x0afake line" in line
    assert "198.51.100.2:1\\x0d\\x1b[31m" in line and "work\\x1b[2Jer" in line


def test_a_damaged_peers_json_shows_what_can_be_shown() -> None:
    operator = {"name": "op", "role": "operator", "public_key": "k2", "overlay_ip": "100.64.0.3"}
    known = {"revision": "x", "peers": [1, "op", None, ["k"], operator]}
    assert [r.name for r in peer_rows(known, WIREGUARD)] == ["op"]
    assert peer_rows({"peers": {"not": "a list"}}, WIREGUARD) == []
    assert known_revision(known) == 0 and known_revision(KNOWN) == 4
