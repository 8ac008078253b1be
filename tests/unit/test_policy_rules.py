"""The policy as nft text (mesh/policyrules.py): exact, sorted addresses; one match per
protocol and port range, on the original (pre-DNAT) port; what a node forwards judged like
what it receives; only a SYN reset; rules matching no one left out; the same input always
the same text."""

from __future__ import annotations

from hivemind_cluster.mesh.policy import Party, Policy, Rule, default_policy
from hivemind_cluster.mesh.policyrules import hub_ruleset, member_ruleset, policy_table

HUB = Party("hub", "hub-1", "hub", "100.64.0.1")
W1 = Party("n0a1b2c3d01", "w1", "worker", "100.64.0.2", {"gpu": "a100"})
W2 = Party("n0a1b2c3d02", "w2", "worker", "100.64.0.10")
OP = Party("n0a1b2c3d03", "op", "operator", "100.64.0.9")
REFUSALS = [
    "    tcp flags & (syn | ack) != syn drop",  # mid-stream without state: dropped, no reset
    "    meta l4proto tcp reject with tcp reset",
    "    reject with icmpx type admin-prohibited",
]


def chain(text: str, name: str) -> list[str]:
    """The lines of chain ``name`` between its header and its closing brace."""
    lines = text.splitlines()
    start = lines.index(f"  chain {name} {{") + 1
    return lines[start : lines.index("  }", start)]


def test_a_worker_accepts_the_operator_and_pings_and_refuses_the_rest() -> None:
    text = member_ruleset("hm0", default_policy(50051, 5001), W1, [W2, HUB, OP, W1])
    assert text.startswith(f"table inet {policy_table('hm0')} {{\n")
    assert policy_table("hm0") == "hivemind_policy_hm0"
    assert chain(text, "input") == [
        "    type filter hook input priority 0; policy accept;",
        '    iifname "hm0" jump from_overlay',
    ]
    assert chain(text, "from_overlay") == [
        "    ct state established,related accept",
        '    ip saddr { 100.64.0.9 } accept comment "policy rule 2"',
        "    ip saddr { 100.64.0.1, 100.64.0.9, 100.64.0.10 } meta l4proto icmp accept"
        ' comment "policy rule 3"',
        *REFUSALS,
    ]
    # What it forwards (a Docker-published port, a routed network) is judged the same.
    assert chain(text, "forward") == [
        "    type filter hook forward priority 0; policy accept;",
        '    iifname "hm0" jump from_overlay',
    ]
    assert "chain relayed" not in text


def test_an_operator_accepts_nothing_new_from_workers_but_pings() -> None:
    text = member_ruleset("hm0", default_policy(50051, 5001), OP, [W1, W2, HUB])
    assert chain(text, "from_overlay")[1:-3] == [
        "    ip saddr { 100.64.0.1, 100.64.0.2, 100.64.0.10 } meta l4proto icmp accept"
        ' comment "policy rule 3"'
    ]


def test_the_hub_filters_its_services_and_what_it_relays() -> None:
    text = hub_ruleset("hm0", default_policy(50051, 5001), HUB, [OP, W2, W1])
    everyone = "{ 100.64.0.2, 100.64.0.9, 100.64.0.10 }"
    tcp = "meta l4proto tcp ct original proto-dst"
    assert chain(text, "from_overlay")[1:-3] == [
        f'    ip saddr {everyone} {tcp} 5001 accept comment "policy rule 1"',
        f'    ip saddr {everyone} {tcp} 50051 accept comment "policy rule 1"',
        f'    ip saddr {everyone} meta l4proto icmp accept comment "policy rule 1"',
        f'    ip saddr {everyone} meta l4proto icmp accept comment "policy rule 3"',
    ]
    assert chain(text, "forward") == [
        "    type filter hook forward priority 0; policy accept;",
        '    iifname "hm0" oifname "hm0" jump relayed',
        '    iifname "hm0" jump from_overlay',
    ]
    assert chain(text, "relayed") == [
        "    ct state established,related accept",
        "    ip saddr { 100.64.0.9 } ip daddr { 100.64.0.2, 100.64.0.10 } accept"
        ' comment "policy rule 2"',
        f"    ip saddr {everyone} ip daddr {everyone} meta l4proto icmp accept"
        ' comment "policy rule 3"',
        *REFUSALS,
    ]


def test_ports_are_grouped_by_protocol_and_overlapping_ranges_merged() -> None:
    rule = Rule(
        ("label:gpu=a100",),
        ("hub",),
        ("udp/53", "tcp/8000-8100", "tcp/22", "tcp/8050-8200", "tcp/8201", "icmp", "udp/53"),
    )
    text = member_ruleset("wg-1", Policy((rule,)), HUB, [W1, W2])
    accepts = [
        "meta l4proto tcp ct original proto-dst 22",
        "meta l4proto tcp ct original proto-dst 8000-8201",
        "meta l4proto udp ct original proto-dst 53",
        "meta l4proto icmp",
    ]
    assert chain(text, "from_overlay")[1:-3] == [
        f'    ip saddr {{ 100.64.0.2 }} {match} accept comment "policy rule 1"' for match in accepts
    ]
    assert 'iifname "wg-1"' in text and "hivemind_policy_wg_1" in text


def test_a_whole_protocol_wins_over_its_ranges() -> None:
    rule = Rule(("*",), ("*",), ("tcp/22", "tcp"))
    text = member_ruleset("hm0", Policy((rule,)), W1, [OP])
    assert chain(text, "from_overlay")[1:-3] == [
        '    ip saddr { 100.64.0.9 } meta l4proto tcp accept comment "policy rule 1"'
    ]


def test_rules_matching_no_one_are_left_out_and_the_text_is_stable() -> None:
    policy = Policy((Rule(("node:n0a1b2c3dff",), ("*",)), Rule(("operator",), ("operator",))))
    assert chain(member_ruleset("hm0", policy, W1, [OP, HUB]), "from_overlay") == [
        "    ct state established,related accept",
        *REFUSALS,
    ]
    relayed = chain(hub_ruleset("hm0", policy, HUB, [W1, W2]), "relayed")
    assert relayed == ["    ct state established,related accept", *REFUSALS]
    first = hub_ruleset("hm0", default_policy(1, 2), HUB, [W1, OP, W2])
    assert first == hub_ruleset("hm0", default_policy(1, 2), HUB, [W2, OP, W1])
