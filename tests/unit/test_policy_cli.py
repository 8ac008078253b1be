"""``hivemind-hub policy show`` / ``policy check`` (hub/policycli.py), with the hub's Redis
replaced at its boundary: the running policy's record and the node list."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.core.console import options, run_handler
from hivemind_cluster.core.errors import InvalidInput, NotFound, Unavailable
from hivemind_cluster.hub import policycli
from hivemind_cluster.mesh import nodes, peerpolicy, store
from hivemind_cluster.mesh.policy import load_policy

POLICY = """name = "hub-1"

[[policy.allow]]
from = ["operator"]
to = ["worker"]
ports = ["tcp/22"]
"""


def node(node_id: str, name: str, role: str, ip: str, state: str = nodes.ACTIVE) -> nodes.Node:
    return nodes.Node(node_id, name, role, ip, "key-" + node_id, state, 0.0)


NODES = [
    node("n1", "w1", "worker", "100.64.0.2"),
    node("n2", "op", "operator", "100.64.0.3"),
    node("n3", "twin", "worker", "100.64.0.4"),
    node("n4", "twin", "worker", "100.64.0.5"),
    node("n5", "gone", "worker", "100.64.0.6", nodes.REVOKED),
    node("n6", "hub-1", "worker", "100.64.0.7"),  # named after the hub: by id or `hub` only
    node("n7", "n1", "worker", "100.64.0.8"),  # named after another node's id
]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hub.toml").write_text(POLICY)
    monkeypatch.setattr(store, "connect_hub", lambda settings: "redis")
    monkeypatch.setattr(nodes, "list_nodes", lambda client: NODES)
    monkeypatch.setattr(peerpolicy, "running_policy_now", lambda client: None)
    return tmp_path


def record_of(path: Path, error: str = "") -> dict[str, Any]:
    """What the hub records of a running policy (mesh/peerpolicy.py ``policy_record``)."""
    policy = load_policy(path, 50051, 5001)
    return {
        "digest": policy.digest(),
        "source": policy.source,
        "rules": [r.as_json() for r in policy.rules],
        "applied_at": 1.0,
        "error": error,
        "error_at": 2.0 if error else None,
    }


def run(state: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    policycli.add_policy_commands(sub, [options(str(state), "hub", as_json=False), options()])
    return run_handler(parser, list(argv))


def check(state: Path, *argv: str) -> int:
    return run(state, "policy", "check", "--state-dir", str(state), *argv)


def test_check_names_the_rule_and_its_line(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(hub, "op", "w1", "22") == 0
    assert capsys.readouterr().out == "allowed by rule 1 (hub.toml line 3)\n"
    assert check(hub, "100.64.0.3", "n1", "tcp/23") == 1
    refused = "refused: no rule lets operator op (n2) open tcp/23 to worker w1 (n1)\n"
    assert capsys.readouterr().out == refused
    assert check(hub, "w1", "op", "22") == 1
    refused = "refused: no rule lets worker w1 (n1) open tcp/22 to operator op (n2)\n"
    assert capsys.readouterr().out == refused
    assert check(hub, "w1", "hub", "tcp/50051") == 0
    assert "allowed by rule 2 (built in: members always reach the pool" in capsys.readouterr().out
    assert check(hub, "op", "n1", "22") == 0  # the node with id n1, not the one named so
    assert check(hub, "hub", "n6", "22") == 1  # `hub` is the hub, whoever took its name
    assert capsys.readouterr().out.endswith(" lets hub hub-1 open tcp/22 to worker hub-1 (n6)\n")


def test_check_as_json(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(hub, "--json", "hub", "w1", "icmp") == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["allowed"] is False and answer["rule"] is None and answer["port"] == "icmp"
    assert answer["source"]["role"] == "hub" and answer["destination"]["id"] == "n1"
    assert check(hub, "--json", "op", "n3", "22") == 0
    assert json.loads(capsys.readouterr().out) | {"source": 0, "destination": 0} == {
        "allowed": True,
        "rule": 1,
        "line": 3,
        "port": "tcp/22",
        "source": 0,
        "destination": 0,
    }


def test_check_uses_the_running_policy(
    hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    running = record_of(Path("/nonexistent"))  # the default policy, not hub.toml's
    monkeypatch.setattr(peerpolicy, "running_policy_now", lambda client: running)
    assert check(hub, "op", "w1", "tcp/8080") == 0
    assert capsys.readouterr().out == "allowed by rule 2 (default policy)\n"


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (("nobody", "w1", "22"), NotFound, "no active node 'nobody' (a name, id or overlay IP"),
        (("gone", "w1", "22"), NotFound, "no active node 'gone'"),
        (("twin", "w1", "22"), InvalidInput, "several active nodes are named 'twin' (n3, n4)"),
        (("hub-1", "w1", "22"), InvalidInput, "several active nodes are named 'hub-1' (hub, n6)"),
        (("op", "w1", "tcp"), InvalidInput, "PORT 'tcp' must be one port"),
        (("op", "w1", "tcp/22-23"), InvalidInput, "PORT 'tcp/22-23' must be one port"),
        (("op", "w1", "ssh"), InvalidInput, "unknown port 'ssh'"),
    ],
)
def test_check_refuses_what_it_cannot_answer(
    hub: Path, argv: tuple[str, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match="^" + re.escape(message)):
        check(hub, *argv)


def test_show_prints_the_running_rules_and_hub_tomls_error(
    hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = f"{hub}/hub.toml line 5: policy rule 1: unknown selector 'wroker' (…)"
    running = record_of(hub / "hub.toml", error)
    monkeypatch.setattr(peerpolicy, "running_policy_now", lambda client: running)
    assert run(hub, "policy", "show", "--state-dir", str(hub)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"running policy: {hub}/hub.toml (digest {running['digest'][:12]}")
    assert lines[1].split() == ["RULE", "LINE", "FROM", "TO", "PORTS"]
    assert lines[2].split() == ["1", "3", "operator", "worker", "tcp/22"]
    assert lines[3].split() == ["2", "built", "in", "*", "hub", "tcp/50051"]
    assert lines[4].startswith("hub.toml's policy was refused ")
    assert lines[4].endswith(f"ago, the rules above still run: {error}")
    assert len(lines) == 5


def test_show_without_a_running_hub_reads_hub_toml(
    hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def down(settings: object) -> None:
        raise Unavailable("the hub is not running")

    monkeypatch.setattr(store, "connect_hub", down)
    assert run(hub, "policy", "show", "--json", "--state-dir", str(hub)) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["running"] is False and view["source"] == str(hub / "hub.toml")
    assert [r["line"] for r in view["rules"]] == [3, 0]
    (hub / "hub.toml").write_text('[[policy.allow]]\nfrom = ["*"]\nto = ["wroker"]\n')
    with pytest.raises(InvalidInput, match=r"hub.toml line 3: policy rule 1: unknown selector"):
        run(hub, "policy", "show", "--state-dir", str(hub))


def test_show_the_default_policy(
    hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (hub / "hub.toml").write_text('name = "hub-1"\n')
    assert run(hub, "policy", "show", "--state-dir", str(hub)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("policy of the default policy (hub.toml has no [policy])")
    assert [line.split()[:2] for line in lines[2:]] == [[n, "default"] for n in "1234"]
    assert "tcp/9464" in lines[3] and "operator" in lines[3]  # operators may scrape /metrics
