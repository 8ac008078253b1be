"""The overlay policy (mesh/policy.py): hub.toml's [[policy.allow]] rules, every way they can
be wrong (each error one line naming the line at fault), selectors, ports and matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.settings import HubSettings, load
from hivemind_cluster.mesh.nodes import new_node_id
from hivemind_cluster.mesh.policy import (
    Party,
    Policy,
    Ports,
    Rule,
    allowing_rule,
    check_ports,
    check_selector,
    control_rule,
    default_policy,
    load_policy,
    matches,
    policy_from_toml,
)
from hivemind_cluster.protos import mesh_pb2

HUB = Party("hub", "hub-1", "hub", "100.64.0.1")
W1 = Party("n0a1b2c3d01", "w1", "worker", "100.64.0.2", {"gpu": "a100"})
W2 = Party("n0a1b2c3d02", "w2", "worker", "100.64.0.3")
OP = Party("n0a1b2c3d03", "op", "operator", "100.64.0.4")
SETTINGS = 'interface = "hm0"\npool_port = 50051\n'
GOOD = (
    SETTINGS
    + """
[[policy.allow]]
from = ["operator"]
to = ["worker"]
ports = ["tcp/22", "tcp/8000-8100"]

# a comment between rules
[[policy.allow]]
from = ["label:gpu=a100", "node:n0a1b2c3d02"]
to = ["hub"]
ports = ["tcp/50051", "icmp"]
"""
)

NOT_A_NODE_ID = (
    " must be node:ID with an id from `hivemind-hub nodes` (like node:n0a1b2c3d4e; a name is "
    "the node's own choice, so it selects nothing: for a group, label the join token and "
    "select label:KEY=VALUE)"
)


def parse(text: str) -> Policy:
    return policy_from_toml(text, "/etc/hub/hub.toml", 50051, 5001)


def refusal(text: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse(text)
    message = caught.value.message
    assert "\n" not in message
    return message


def test_rules_keep_their_lines_and_a_built_in_rule_keeps_the_pool_reachable() -> None:
    policy = parse(GOOD)
    assert policy.source == "/etc/hub/hub.toml"
    assert policy.rules == (
        Rule(("operator",), ("worker",), ("tcp/22", "tcp/8000-8100"), line=4),
        Rule(("label:gpu=a100", "node:n0a1b2c3d02"), ("hub",), ("tcp/50051", "icmp"), line=10),
        control_rule(50051),
    )


def test_without_a_policy_table_the_default_runs() -> None:
    assert parse(SETTINGS) == default_policy(50051, 5001)
    assert load_policy(Path("/nonexistent/hub.toml"), 50051, 5001) == default_policy(50051, 5001)


def test_hub_settings_load_beside_a_policy(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(GOOD)
    assert load(HubSettings, path, state_dir=str(tmp_path)).interface == "hm0"
    assert len(load_policy(path, 50051, 5001).rules) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[policy.allow]]\nfrom = ["operator"]\nto = ["wroker"]\n',
            "/etc/hub/hub.toml line 3: policy rule 1: unknown selector 'wroker' "
            "(did you mean 'worker'? selectors: *, hub, worker, operator, "
            "node:ID, label:KEY=VALUE)",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["*"]\n\n[[policy.allow]]\n'
            'from = ["*"]\nto = ["hub"]\nports = ["tcp/99999"]\n',
            "/etc/hub/hub.toml line 8: policy rule 2: port 'tcp/99999': ports are 1-65535, "
            "the first not above the last",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["hub"]\nports = ["sctp/1"]\n',
            "/etc/hub/hub.toml line 4: policy rule 1: unknown port 'sctp/1' "
            "(ports: tcp/22, tcp/8000-8100, udp/53, tcp, udp, icmp)",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["hub"]\nports = ["icmp/8"]\n',
            "/etc/hub/hub.toml line 4: policy rule 1: port 'icmp/8': icmp has no ports "
            "(write 'icmp')",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["hub"]\nports = ["tcp/90-80"]\n',
            "/etc/hub/hub.toml line 4: policy rule 1: port 'tcp/90-80': ports are 1-65535, "
            "the first not above the last",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["hub"]\nports = ["tcp/ssh"]\n',
            "/etc/hub/hub.toml line 4: policy rule 1: port 'tcp/ssh' must be tcp/PORT or "
            "tcp/FIRST-LAST",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["hub"]\nports = [22]\n',
            "/etc/hub/hub.toml line 4: policy rule 1: a port must be a string like "
            "'tcp/22', got 22",
        ),
        (
            '\n[[policy.allow]]\nform = ["*"]\nto = ["hub"]\n',
            "/etc/hub/hub.toml line 3: policy rule 1: unknown key 'form' (keys: from, to, ports)",
        ),
        (
            '[[policy.allow]]\nto = ["hub"]\n',
            "/etc/hub/hub.toml line 1: policy rule 1: needs 'from' (a list of selectors: "
            "*, hub, worker, operator, node:ID, label:KEY=VALUE)",
        ),
        (
            '[[policy.allow]]\nfrom = []\nto = ["hub"]\n',
            "/etc/hub/hub.toml line 2: policy rule 1: 'from' is empty: the rule would match none",
        ),
        (
            '[[policy.allow]]\nfrom = "operator"\nto = 3\n',
            "/etc/hub/hub.toml line 3: policy rule 1: 'to' must be a list of strings",
        ),
        (
            '[[policy.allow]]\nfrom = ["label:gpu"]\nto = ["hub"]\n',
            "/etc/hub/hub.toml line 2: policy rule 1: selector 'label:gpu' must be "
            "label:KEY=VALUE (letters, digits, '.', '_', '-')",
        ),
        (
            '[[policy.allow]]\nfrom = ["node:"]\nto = ["hub"]\n',
            "/etc/hub/hub.toml line 2: policy rule 1: selector 'node:'" + NOT_A_NODE_ID,
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["node:w1"]\n',
            "/etc/hub/hub.toml line 3: policy rule 1: selector 'node:w1'" + NOT_A_NODE_ID,
        ),
        (
            '[policy]\nallow = []\ndeny = ["*"]\n',
            "/etc/hub/hub.toml line 3: unknown policy key 'deny' (only [[policy.allow]])",
        ),
        (
            '[policy.deny]\nfrom = ["*"]\n',
            "/etc/hub/hub.toml line 1: unknown policy key 'deny' (only [[policy.allow]])",
        ),
        (
            'policy = "everyone"\n',
            "/etc/hub/hub.toml: policy must be [[policy.allow]] rules",
        ),
        (
            "[policy]\nallow = 3\n",
            "/etc/hub/hub.toml line 2: policy.allow must be a list of rules ([[policy.allow]])",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"\nto = ["hub"]\n',
            "/etc/hub/hub.toml line 3: not valid TOML: Unclosed array (column 1)",
        ),
        (
            '[[policy.allow]]\nfrom = ["*"]\nto = ["hub"\n',
            "/etc/hub/hub.toml: not valid TOML: Unclosed array (at end of document)",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_line_at_fault(text: str, expected: str) -> None:
    assert refusal(text) == expected


def test_rules_written_inline_are_placed_at_their_allow_line() -> None:
    text = (
        '[policy]\nallow = [\n  {from = ["*"], to = ["hub"]},\n  {from = ["x"], to = ["*"]},\n]\n'
    )
    assert refusal(text).startswith("/etc/hub/hub.toml line 2: policy rule 2: unknown selector")


def test_selectors_and_ports_are_canonical_and_deduplicated() -> None:
    text = '[[policy.allow]]\nfrom = " operator "\nto = ["worker", "worker"]\nports = ["TCP/22"]\n'
    assert parse(text).rules[0] == Rule(("operator",), ("worker",), ("tcp/22",), line=1)
    assert check_selector("label:zone=eu-1") == "label:zone=eu-1"
    assert check_ports("udp") == Ports("udp")
    assert check_ports("tcp/8000-8100") == Ports("tcp", 8000, 8100)
    assert check_ports("tcp/8000-8100").text == "tcp/8000-8100"
    assert check_ports("tcp/22-22").text == "tcp/22"
    with pytest.raises(InvalidInput, match="did you mean 'operator'"):
        check_selector("Operators")


def test_selectors_match_the_hubs_view_of_a_node() -> None:
    assert matches("*", HUB) and matches("*", W1)
    assert matches("worker", W1) and not matches("worker", OP)
    assert matches("hub", HUB) and not matches("hub", W1)
    assert matches(f"node:{W1.node_id}", W1) and not matches(f"node:{W1.node_id}", W2)
    assert matches("node:hub", HUB) and not matches("node:hub", W1)
    assert matches("label:gpu=a100", W1)
    assert not matches("label:gpu=a100", W2) and not matches("label:gpu=h100", W1)


def test_node_selects_the_id_the_hub_gave_never_a_name_a_node_chose() -> None:
    """Anyone with a token picks their node's name: one naming itself after another node,
    its id, or the hub must inherit none of their rules."""
    impostors = [
        Party("n0a1b2c3dff", name, "worker", "100.64.0.9") for name in ("w1", W1.node_id, "hub")
    ]
    for selector in (f"node:{W1.node_id}", "node:hub"):
        assert not any(matches(check_selector(selector), p) for p in impostors)
    policy = Policy((Rule((f"node:{W1.node_id}",), ("node:hub",)),))
    assert allowing_rule(policy, W1, HUB, "tcp", 6379) is not None
    assert all(allowing_rule(policy, p, HUB, "tcp", 6379) is None for p in impostors)
    assert check_selector(f"node:{new_node_id()}")  # the ids the hub gives are accepted
    for name in ("node:w1", "node:N0A1B2C3D01", "node:n0a1b2c3d0"):
        with pytest.raises(InvalidInput, match="must be node:ID"):
            check_selector(name)


def test_default_policy_lets_operators_reach_workers_but_not_the_reverse() -> None:
    policy = default_policy(50051, 5001)
    assert allowing_rule(policy, OP, W1, "tcp", 22) == policy.rules[1]
    assert allowing_rule(policy, W1, OP, "tcp", 22) is None
    assert allowing_rule(policy, W1, W2, "tcp", 22) is None
    assert allowing_rule(policy, W1, HUB, "tcp", 50051) == policy.rules[0]
    assert allowing_rule(policy, W1, HUB, "tcp", 6379) is None
    assert allowing_rule(policy, W1, OP, "icmp", 0) == policy.rules[2]
    assert allowing_rule(policy, W1, HUB, "udp", 5001) is None


def test_port_ranges_bound_what_a_rule_allows() -> None:
    policy = parse(GOOD)
    assert allowing_rule(policy, OP, W1, "tcp", 8100) == policy.rules[0]
    assert allowing_rule(policy, OP, W1, "tcp", 8101) is None
    assert allowing_rule(policy, OP, W1, "udp", 22) is None
    assert allowing_rule(policy, W1, HUB, "icmp", 0) == policy.rules[1]
    assert allowing_rule(policy, OP, HUB, "tcp", 50051) == policy.rules[2]  # built in
    assert allowing_rule(policy, OP, HUB, "tcp", 5001) is None


def test_the_digest_is_what_the_rules_mean_not_where_they_are() -> None:
    moved = parse(GOOD.replace("# a comment between rules", "\n\n"))
    assert moved.rules[1].line != parse(GOOD).rules[1].line
    assert moved.digest() == parse(GOOD).digest()
    assert parse(GOOD.replace("tcp/22", "tcp/23")).digest() != parse(GOOD).digest()


def test_a_policy_survives_the_wire_and_a_forged_one_is_refused() -> None:
    policy = parse(GOOD)
    received = Policy.from_proto(mesh_pb2.Policy.FromString(policy.to_proto().SerializeToString()))
    assert received.digest() == policy.digest()
    assert [r.sources for r in received.rules] == [r.sources for r in policy.rules]
    bad = policy.to_proto()
    bad.rules[0].sources.append("root")
    with pytest.raises(InvalidInput, match=r"^policy from the hub: rule 1: unknown selector"):
        Policy.from_proto(bad)
    tampered = policy.to_proto()
    tampered.rules[0].ports.append("tcp/23")
    with pytest.raises(InvalidInput, match="digest does not match"):
        Policy.from_proto(tampered)
