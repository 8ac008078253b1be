"""The overlay policy as nftables rules: one ``inet`` table per WireGuard interface.

A member filters what arrives on its interface, for itself (input) and for whatever it
forwards (forward: Docker-published ports, routed networks), by the same rules: what a
member forwards is judged as if it were addressed to the member itself. The hub does the
same, and filters what it relays between members (forward, in and out of the same
interface) by source and destination. Ports are matched as the connection first asked for
them (``ct original proto-dst``), before any DNAT: a Docker port published as 8080 is
tcp/8080 to the policy, whatever the container listens on.

All of it is stateful: replies of an allowed connection pass, a new connection no rule
allows is refused at once (a SYN with a TCP reset, anything else but TCP with ICMP
administratively prohibited) rather than dropped, so a refused connect fails with a clear
error instead of hanging. A TCP packet that is not a SYN and has no connection state is
dropped without a reset: it belongs to a connection that began elsewhere (a path that went
from direct to relayed brings the hub packets of a connection it never saw start), and a
reset would kill that connection where a drop only costs a resend.

Source addresses can be trusted: WireGuard accepts a packet from a peer only with a source
inside that peer's allowed-ips, and the hub does the same for what it relays.

Rules name exact addresses (``*`` is every known member's address, not the overlay's
CIDR) and come out sorted, so the same policy and members always render the same text:
callers reload nft only when the text changed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from hivemind_cluster.core import nftables
from hivemind_cluster.mesh.policy import ANY, PROTOCOLS, Party, Policy, Ports, Rule, matches

WITHOUT_NFT = (
    "nft is not installed, so the overlay policy cannot be enforced; "
    "install nftables (`make setup`)"
)
REFUSE = (
    "tcp flags & (syn | ack) != syn drop",  # mid-stream, without state: never a reset
    "meta l4proto tcp reject with tcp reset",
    "reject with icmpx type admin-prohibited",
)


def policy_table(interface: str) -> str:
    return nftables.table_name("policy_" + interface)


def member_ruleset(interface: str, policy: Policy, me: Party, others: Iterable[Party]) -> str:
    """What ``me`` accepts on ``interface``, for itself or to forward: connections from
    ``others`` (the hub among them) that a rule with ``me`` among its destinations allows."""
    return _table(interface, _input_rules(policy, me, others), None)


def hub_ruleset(interface: str, policy: Policy, hub: Party, members: Iterable[Party]) -> str:
    """The hub's rules for connections to itself (and what it forwards elsewhere, judged
    the same) and for what it relays from one member to another."""
    members = [m for m in members if m.overlay_ip != hub.overlay_ip]
    relayed = []
    for number, rule in enumerate(policy.rules, 1):
        sources = _addresses(rule.sources, members)
        destinations = _addresses(rule.destinations, members)
        if sources and destinations:
            match = f"ip saddr {sources} ip daddr {destinations}"
            relayed.extend(_accepts(match, rule, number))
    return _table(interface, _input_rules(policy, hub, members), relayed)


def _input_rules(policy: Policy, me: Party, others: Iterable[Party]) -> list[str]:
    others = [p for p in others if p.overlay_ip != me.overlay_ip]
    accepted = []
    for number, rule in enumerate(policy.rules, 1):
        if not any(matches(d, me) for d in rule.destinations):
            continue
        sources = _addresses(rule.sources, others)
        if sources:  # nft refuses an empty anonymous set; a rule matching no one adds nothing
            accepted.extend(_accepts(f"ip saddr {sources}", rule, number))
    return accepted


def _addresses(selectors: Iterable[str], parties: Iterable[Party]) -> str:
    """The nft set of the parties' addresses any selector matches; "" when none does."""
    chosen = {p.overlay_ip for p in parties if any(matches(s, p) for s in selectors)}
    if not chosen:
        return ""
    return "{ " + ", ".join(sorted(chosen, key=ipaddress.IPv4Address)) + " }"


def _accepts(match: str, rule: Rule, number: int) -> list[str]:
    comment = f'comment "policy rule {number}"'
    return [
        " ".join(filter(None, (match, ports, "accept", comment))) for ports in _port_matches(rule)
    ]


def _port_matches(rule: Rule) -> list[str]:
    """One nft match per protocol and port range: ``meta l4proto tcp ct original proto-dst
    8000-8100``, ``meta l4proto icmp``; a single "" (anything) for a rule without ports.

    The port is the connection's original one (before DNAT). One range per rule rather
    than a set of them: nft 1.0 lists an anonymous set of ``ct original proto-dst`` values
    as ``0x16 [invalid type]``, and ``nft list ruleset`` should read as the policy does."""
    ranges = rule.port_ranges()
    if any(p.protocol == ANY for p in ranges):
        return [""]
    found = []
    for protocol in PROTOCOLS:
        mine = [p for p in ranges if p.protocol == protocol]
        if not mine:
            continue
        if protocol == "icmp" or any(p.every_port for p in mine):
            found.append(f"meta l4proto {protocol}")
        else:
            found.extend(
                f"meta l4proto {protocol} ct original proto-dst {span}" for span in _merged(mine)
            )
    return found


def _merged(ranges: list[Ports]) -> list[str]:
    """Sorted ranges with overlapping and adjacent ones joined: each port in one rule."""
    spans: list[list[int]] = []
    for p in sorted(ranges, key=lambda p: (p.first, p.last)):
        if spans and p.first <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], p.last)
        else:
            spans.append([p.first, p.last])
    return [str(a) if a == b else f"{a}-{b}" for a, b in spans]


def _table(interface: str, accepted: list[str], relayed: list[str] | None) -> str:
    """Input and forward both send what arrives on ``interface`` to ``from_overlay``; on
    the hub (``relayed`` given) what leaves by it again goes to ``relayed`` first."""
    arriving = f'iifname "{interface}"'
    relaying = [] if relayed is None else [f'{arriving} oifname "{interface}" jump relayed']
    text = [
        f"table inet {policy_table(interface)} {{",
        *_base_chain("input", [f"{arriving} jump from_overlay"]),
        *_base_chain("forward", [*relaying, f"{arriving} jump from_overlay"]),
        *_verdict_chain("from_overlay", accepted),
        *([] if relayed is None else _verdict_chain("relayed", relayed)),
    ]
    return "\n".join([*text, "}", ""])


def _base_chain(hook: str, body: list[str]) -> list[str]:
    head = f"type filter hook {hook} priority 0; policy accept;"
    return [f"  chain {hook} {{", *(f"    {line}" for line in [head, *body]), "  }"]


def _verdict_chain(name: str, accepted: list[str]) -> list[str]:
    body = ["ct state established,related accept", *accepted, *REFUSE]
    return [f"  chain {name} {{", *(f"    {line}" for line in body), "  }"]


def apply(interface: str, ruleset: str) -> None:
    """Replace the interface's policy table with ``ruleset`` in one transaction (a ruleset
    nft refuses leaves the running one in place)."""
    nftables.load_table(policy_table(interface), ruleset, WITHOUT_NFT)


def remove(interface: str) -> None:
    nftables.delete_table(policy_table(interface))
