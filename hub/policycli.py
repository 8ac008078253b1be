"""``hivemind-hub policy show`` and ``policy check``: the overlay policy as the hub runs it.

``show`` prints the running policy (what the hub recorded in Redis: the rules it enforces
and hands to every member), and says so when hub.toml's policy is refused right now (the
running one stays until the file is fixed). Without a running hub it shows hub.toml's
policy as the hub would run it. ``check`` answers one question with the same matching the
firewalls are built from (mesh/policy.py): may SRC open PORT to DST, and which rule says so.
SRC and DST may be given by name for the question's sake; the policy itself never selects
by name (``node:`` takes the hub-given id), and the answer names each node with its id.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from hivemind_cluster.core.console import age, print_json, print_table
from hivemind_cluster.core.errors import InvalidInput, NotFound, Unavailable
from hivemind_cluster.core.names import HUB_CONFIG, HUB_NODE_ID
from hivemind_cluster.core.settings import HubSettings, load_hub_settings
from hivemind_cluster.mesh import nodes, peerpolicy, store
from hivemind_cluster.mesh.inventory import hub_name
from hivemind_cluster.mesh.policy import (
    DEFAULT_SOURCE,
    Party,
    Policy,
    Rule,
    allowing_rule,
    check_ports,
    load_policy,
)

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
RULE_COLUMNS = ["rule", "line", "from", "to", "ports"]


def add_policy_commands(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    """``policy show`` and ``policy check SRC DST PORT`` (``parents``: --state-dir, --json)."""
    policy = sub.add_parser("policy", help="the overlay policy (hub.toml [[policy.allow]])")
    actions = policy.add_subparsers(dest="action", required=True)
    text = "the running policy, and hub.toml's error if it is refused"
    actions.add_parser("show", parents=parents, help=text).set_defaults(handler=cmd_policy_show)
    text = "may SRC open PORT to DST? (exit 0: allowed, 1: refused)"
    p = actions.add_parser("check", parents=parents, help=text)
    p.set_defaults(handler=cmd_policy_check)
    p.add_argument("source", metavar="SRC", help="node name, id, overlay IP, or hub")
    p.add_argument("destination", metavar="DST", help="node name, id, overlay IP, or hub")
    p.add_argument("port", metavar="PORT", help="tcp/22, 22 (= tcp/22), udp/53, icmp")


def cmd_policy_show(args: argparse.Namespace) -> int:
    settings = load_hub_settings(args.state_dir)
    try:
        record = peerpolicy.running_policy_now(store.connect_hub(settings))
    except Unavailable:
        record = None  # no hub running: show what it would run
    if record is None:
        policy, running, error = load_policy(config_of(settings), *ports_of(settings)), False, ""
    else:
        policy, running, error = peerpolicy.policy_of_record(record), True, record["error"]
    view: dict[str, Any] = {
        "running": running,
        "source": policy.source,
        "digest": policy.digest(),
        "applied_at": record["applied_at"] if record else None,
        "rules": [rule_view(policy, rule) for rule in policy.rules],
        "error": error,
        "error_at": record["error_at"] if record else None,
    }
    if args.json:
        print_json(view)
        return 0
    print(headline(view))
    print_table([rule_line(r) for r in view["rules"]], RULE_COLUMNS)
    if error:
        when = f" {age(time.time() - view['error_at'])} ago" if view["error_at"] else ""
        print(f"hub.toml's policy was refused{when}, the rules above still run: {error}")
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    settings = load_hub_settings(args.state_dir)
    client = store.connect_hub(settings)
    record = peerpolicy.running_policy_now(client)
    policy = (
        peerpolicy.policy_of_record(record)
        if record
        else load_policy(config_of(settings), *ports_of(settings))
    )
    hub, members = parties(settings, client)
    source, destination = (party_of(ref, hub, members) for ref in (args.source, args.destination))
    protocol, port = one_port(args.port)
    rule = allowing_rule(policy, source, destination, protocol, port)
    wanted = protocol if protocol == "icmp" else f"{protocol}/{port}"
    if args.json:
        print_json(
            {
                "allowed": rule is not None,
                "rule": policy.number_of(rule) if rule else None,
                "line": rule.line if rule and rule.line else None,
                "source": party_view(source),
                "destination": party_view(destination),
                "port": wanted,
            }
        )
    elif rule is not None:
        print(f"allowed by rule {policy.number_of(rule)} ({origin(policy, rule)})")
    else:
        print(
            f"refused: no rule lets {source.describe()} open {wanted} to {destination.describe()}"
        )
    return 0 if rule is not None else 1


def config_of(settings: HubSettings) -> Path:
    return settings.path / HUB_CONFIG


def ports_of(settings: HubSettings) -> tuple[int, int, int]:
    return settings.pool_port, settings.web_port, settings.metrics_port


def origin(policy: Policy, rule: Rule) -> str:
    """Where a rule comes from: ``hub.toml line 14``, ``default policy``, ``built in``."""
    if rule.line:
        return f"{Path(policy.source).name} line {rule.line}"
    if policy.source == DEFAULT_SOURCE:
        return "default policy"
    return "built in: members always reach the pool, which sends them the policy"


def rule_view(policy: Policy, rule: Rule) -> dict[str, Any]:
    return rule.as_json() | {"rule": policy.number_of(rule), "origin": origin(policy, rule)}


def rule_line(view: dict[str, Any]) -> dict[str, Any]:
    """A rule as the table shows it."""
    return {
        "rule": view["rule"],
        "line": view["line"] or ("default" if view["origin"] == "default policy" else "built in"),
        "from": ", ".join(view["sources"]),
        "to": ", ".join(view["destinations"]),
        "ports": ", ".join(view["ports"]) or "all",
    }


def headline(view: dict[str, Any]) -> str:
    source = "the default policy (hub.toml has no [policy])"
    if view["source"] != DEFAULT_SOURCE:
        source = view["source"]
    digest = view["digest"][:12]
    if not view["running"]:
        return f"policy of {source} (digest {digest}; the hub is not running)"
    since = f", applied {age(time.time() - view['applied_at'])} ago" if view["applied_at"] else ""
    return f"running policy: {source} (digest {digest}{since})"


def parties(settings: HubSettings, client: redis.Redis) -> tuple[Party, list[Party]]:
    """The hub, and every active member, as the policy sees them."""
    hub = Party(HUB_NODE_ID, hub_name(settings), "hub", settings.hub_ip)
    members = [
        Party(n.id, n.name, n.role, n.overlay_ip, dict(n.labels))
        for n in nodes.list_nodes(client)
        if n.state == nodes.ACTIVE
    ]
    return hub, members


def party_of(ref: str, hub: Party, members: list[Party]) -> Party:
    """A node given by its id, overlay IP or name (``hub``: the hub). Ids and addresses
    are the hub's and come first; a name is the node's own choice, so one several nodes
    chose (the hub's among them) is refused rather than guessed."""
    if ref in ("hub", hub.node_id, hub.overlay_ip):
        return hub
    found = [m for m in members if ref in (m.node_id, m.overlay_ip)]
    found = found or [p for p in (hub, *members) if p.name == ref]
    if len(found) > 1:
        ids = ", ".join(p.node_id for p in found)
        raise InvalidInput(f"several active nodes are named {ref!r} ({ids}); use the node id")
    if not found:
        raise NotFound(
            f"no active node {ref!r} (a name, id or overlay IP from `hivemind-hub nodes`, or hub)"
        )
    return found[0]


def one_port(text: str) -> tuple[str, int]:
    """``tcp/22``, ``22`` (tcp), ``udp/53`` or ``icmp`` as (protocol, port)."""
    ports = check_ports(f"tcp/{text}" if text.strip().isdigit() else text)
    if ports.protocol == "icmp":
        return "icmp", 0
    if ports.every_port or ports.first != ports.last:
        raise InvalidInput(f"PORT {text!r} must be one port: tcp/22, 22, udp/53 or icmp")
    return ports.protocol, ports.first


def party_view(party: Party) -> dict[str, Any]:
    return {
        "id": party.node_id,
        "name": party.name,
        "role": party.role,
        "overlay_ip": party.overlay_ip,
        "labels": dict(party.labels),
    }
