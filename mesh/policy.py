"""The overlay policy: who may open connections to whom, on which ports.

A policy is a list of allow rules (``[[policy.allow]]`` in hub.toml): any of a rule's
sources may open connections to any of its destinations on its ports. Everything else is
refused, but replies of allowed connections always pass (the enforcement is stateful:
mesh/policyrules.py). The hub enforces it on its forwarding path, every member on its own
WireGuard interface, so a direct path between two members obeys the same rules as a
relayed one.

This module is pure (no nft, no Redis): the hub parses and distributes the policy, agents
receive it as ``mesh_pb2.Policy`` and re-check it here before they render it. Selectors
match what the hub decided about a node (its role, the id the hub gave it, the hub's
labels from its join token), never anything a node says about itself (its name is its
own choice: anyone with a token could join as ``w1`` or ``hub``), so no node can grant
itself access.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.protos import mesh_pb2

PROTOCOLS = ("tcp", "udp", "icmp")
ANY = "any"  # the protocol of a rule without ports: every protocol, every port
ROLES = ("hub", "worker", "operator")
SELECTOR_FORMS = "*, hub, worker, operator, node:ID, label:KEY=VALUE"
PORT_FORMS = "tcp/22, tcp/8000-8100, udp/53, tcp, udp, icmp"
RULE_KEYS = ("from", "to", "ports")
DEFAULT_SOURCE = "default"
# A node id as the hub gives it (mesh/nodes.new_node_id), or the hub's own (names.HUB_NODE_ID).
_NODE_ID = re.compile(r"n[0-9a-f]{10}|hub")
_LABEL_PART = re.compile(r"[A-Za-z0-9._-]{1,63}")  # what a join token's labels may hold
_PORT_RANGE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")


@dataclass(frozen=True)
class Ports:
    """One protocol and a port range of it; ``0, 0``: every port (and ICMP has none)."""

    protocol: str  # "tcp" | "udp" | "icmp" | "any"
    first: int = 0
    last: int = 0

    @property
    def every_port(self) -> bool:
        return self.first == 0

    @property
    def text(self) -> str:
        """The form hub.toml writes (``tcp/22``, ``tcp/8000-8100``, ``udp``, ``icmp``)."""
        if self.every_port:
            return self.protocol
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.protocol}/{span}"

    def covers(self, protocol: str, port: int) -> bool:
        if self.protocol == ANY:
            return True
        if self.protocol != protocol:
            return False
        return self.every_port or self.first <= port <= self.last


@dataclass(frozen=True)
class Rule:
    """``sources`` may open connections to ``destinations`` on ``ports`` (text forms, checked
    by ``policy_from_toml`` / ``Policy.from_proto``; ``()``: everything)."""

    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    ports: tuple[str, ...] = ()
    line: int = 0  # hub.toml line of its [[policy.allow]] (0: a default or received rule)

    def port_ranges(self) -> tuple[Ports, ...]:
        if not self.ports:
            return (Ports(ANY),)
        return tuple(check_ports(text) for text in self.ports)

    def allows(self, source: Party, destination: Party, protocol: str, port: int) -> bool:
        return (
            any(matches(s, source) for s in self.sources)
            and any(matches(d, destination) for d in self.destinations)
            and any(p.covers(protocol, port) for p in self.port_ranges())
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "destinations": list(self.destinations),
            "ports": list(self.ports),
            "line": self.line,
        }


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    source: str = DEFAULT_SOURCE  # "default", the hub.toml path, or "hub" (received)

    def digest(self) -> str:
        """SHA-256 of what the rules mean (not their lines, not where they came from): the
        same policy has the same digest on the hub and on every member."""
        canonical = [[list(r.sources), list(r.destinations), list(r.ports)] for r in self.rules]
        text = json.dumps(canonical, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_proto(self) -> mesh_pb2.Policy:
        return mesh_pb2.Policy(
            digest=self.digest(),
            rules=[
                mesh_pb2.PolicyRule(sources=r.sources, destinations=r.destinations, ports=r.ports)
                for r in self.rules
            ],
        )

    @classmethod
    def from_proto(cls, message: mesh_pb2.Policy) -> Policy:
        """The hub's policy as a member received it, checked again like hub.toml's: a member
        never renders a selector or a port it does not understand."""
        rules = []
        for number, rule in enumerate(message.rules, 1):
            try:
                rules.append(
                    checked_rule(list(rule.sources), list(rule.destinations), list(rule.ports))
                )
            except InvalidInput as exc:
                raise InvalidInput(f"policy from the hub: rule {number}: {exc.message}") from None
        policy = cls(tuple(rules), source="hub")
        if message.digest and message.digest != policy.digest():
            raise InvalidInput("policy from the hub: its digest does not match its rules")
        return policy

    def number_of(self, rule: Rule) -> int:
        """The rule's number as ``policy show`` prints it (1 = the first)."""
        return self.rules.index(rule) + 1


@dataclass(frozen=True)
class Party:
    """A node as the policy sees it: what the hub knows of it."""

    node_id: str
    name: str
    role: str  # "hub" | "worker" | "operator"
    overlay_ip: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``worker w1 (n0a1b2c3d4e)``, ``hub hub-1``: how a refusal names it, with the id
        a ``node:`` selector takes (the name is only what the node calls itself)."""
        if self.role == "hub" or not self.name:
            return f"{self.role} {self.name or self.node_id}"
        return f"{self.role} {self.name} ({self.node_id})"


def check_selector(text: str) -> str:
    """A selector in its canonical form, or InvalidInput saying what is wrong with it."""
    if not isinstance(text, str):
        raise InvalidInput(f"a selector must be a string, got {text!r}")
    selector = text.strip()
    if selector == "*" or selector in ROLES:
        return selector
    kind, colon, value = selector.partition(":")
    if colon and kind == "node":
        if not _NODE_ID.fullmatch(value):
            raise InvalidInput(
                f"selector {text!r} must be node:ID with an id from `hivemind-hub nodes` "
                "(like node:n0a1b2c3d4e; a name is the node's own choice, so it selects "
                "nothing: for a group, label the join token and select label:KEY=VALUE)"
            )
        return selector
    if colon and kind == "label":
        key, equals, label = value.partition("=")
        if not (equals and _LABEL_PART.fullmatch(key) and _LABEL_PART.fullmatch(label)):
            raise InvalidInput(
                f"selector {text!r} must be label:KEY=VALUE (letters, digits, '.', '_', '-')"
            )
        return selector
    raise InvalidInput(f"unknown selector {text!r} ({_suggestion(selector)}{SELECTOR_FORMS})")


def _suggestion(selector: str) -> str:
    close = difflib.get_close_matches(selector.lower(), ["*", *ROLES], n=1)
    return f"did you mean {close[0]!r}? selectors: " if close else "selectors: "


def check_ports(text: str) -> Ports:
    """``tcp/22``, ``tcp/8000-8100``, ``udp/53``, ``tcp``, ``udp``, ``icmp``: as Ports."""
    if not isinstance(text, str):
        raise InvalidInput(f"a port must be a string like 'tcp/22', got {text!r}")
    protocol, slash, span = text.strip().lower().partition("/")
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"unknown port {text!r} (ports: {PORT_FORMS})")
    if not slash:
        return Ports(protocol)
    if protocol == "icmp":
        raise InvalidInput(f"port {text!r}: icmp has no ports (write 'icmp')")
    found = _PORT_RANGE.fullmatch(span)
    if found is None:
        raise InvalidInput(f"port {text!r} must be {protocol}/PORT or {protocol}/FIRST-LAST")
    first = int(found.group(1))
    last = int(found.group(2) or first)
    if not 1 <= first <= last <= 65535:
        raise InvalidInput(f"port {text!r}: ports are 1-65535, the first not above the last")
    return Ports(protocol, first, last)


def matches(selector: str, party: Party) -> bool:
    if selector == "*":
        return True
    if selector in ROLES:
        return party.role == selector
    kind, _, value = selector.partition(":")
    if kind == "node":
        return value == party.node_id  # never the name: a node picks that itself
    if kind == "label":
        key, _, label = value.partition("=")
        return party.labels.get(key) == label
    return False  # never reached for a checked selector: no match is the safe answer


def checked_rule(
    sources: list[str], destinations: list[str], ports: list[str], line: int = 0
) -> Rule:
    """A rule of canonical, de-duplicated selectors and ports; InvalidInput if one is wrong."""
    return Rule(
        sources=_unique(check_selector(s) for s in sources),
        destinations=_unique(check_selector(d) for d in destinations),
        ports=_unique(check_ports(p).text for p in ports),
        line=line,
    )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def default_policy(pool_port: int, web_port: int, metrics_port: int = 0) -> Policy:
    """What runs without a ``[policy]`` in hub.toml: everyone may use the hub's services,
    operators may also scrape the hub's metrics (``metrics_port``, 0: none) and reach
    workers, everyone may ping everyone; workers may not open connections to operators
    (nor to each other)."""
    metrics = (Rule(("operator",), ("hub",), (f"tcp/{metrics_port}",)),) if metrics_port else ()
    return Policy(
        (
            Rule(("*",), ("hub",), (f"tcp/{pool_port}", f"tcp/{web_port}", "icmp")),
            *metrics,
            Rule(("operator",), ("worker",)),
            Rule(("*",), ("*",), ("icmp",)),
        )
    )


def control_rule(pool_port: int) -> Rule:
    """Appended to every policy of hub.toml: the members' stream to the pool carries the
    policy itself, so no policy may cut it (a member cut off could never receive a fix)."""
    return Rule(("*",), ("hub",), (f"tcp/{pool_port}",))


def policy_from_toml(
    text: str, path: str, pool_port: int, web_port: int, metrics_port: int = 0
) -> Policy:
    """hub.toml's policy; InvalidInput naming the file and line at fault (``hub.toml line
    14: policy rule 2: unknown selector 'wroker' (…)``). No ``[policy]``: the default."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(_syntax_error(path, str(exc))) from None
    if "policy" not in data:
        return default_policy(pool_port, web_port, metrics_port)
    lines = Lines(text)
    table = data["policy"]
    if not isinstance(table, dict):
        raise InvalidInput(f"{lines.where(path, 0)}: policy must be [[policy.allow]] rules")
    for key in table:
        if key != "allow":
            where = lines.where(path, lines.policy_key(key))
            raise InvalidInput(f"{where}: unknown policy key {key!r} (only [[policy.allow]])")
    entries = table.get("allow", [])
    if not isinstance(entries, list):
        where = lines.where(path, lines.policy_key("allow"))
        raise InvalidInput(f"{where}: policy.allow must be a list of rules ([[policy.allow]])")
    lines.expect_rules(len(entries))
    rules = [_rule_of(entry, number, lines, path) for number, entry in enumerate(entries, 1)]
    return Policy((*rules, control_rule(pool_port)), source=path)


def _syntax_error(path: str, message: str) -> str:
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if found is None:
        return f"{path}: not valid TOML: {message}"
    reason = message[: found.start()]
    return f"{path} line {found.group(1)}: not valid TOML: {reason} (column {found.group(2)})"


def _rule_of(entry: Any, number: int, lines: Lines, path: str) -> Rule:
    def fail(line: int, message: str) -> InvalidInput:
        return InvalidInput(f"{lines.where(path, line)}: policy rule {number}: {message}")

    header = lines.rule(number)
    if not isinstance(entry, dict):
        raise fail(header, "must be a table with from, to and ports")
    for key in entry:
        if key not in RULE_KEYS:
            raise fail(lines.rule_key(number, key), f"unknown key {key!r} (keys: from, to, ports)")
    for key in ("from", "to"):
        if key not in entry:
            raise fail(header, f"needs {key!r} (a list of selectors: {SELECTOR_FORMS})")
    values: dict[str, list[str]] = {}
    for key in RULE_KEYS:
        raw = entry.get(key, [])
        values[key] = [raw] if isinstance(raw, str) else raw
        if not isinstance(values[key], list):
            raise fail(lines.rule_key(number, key), f"{key!r} must be a list of strings")
        if key != "ports" and not values[key]:
            raise fail(lines.rule_key(number, key), f"{key!r} is empty: the rule would match none")
    for key in RULE_KEYS:  # each key's own line, so the error points at the list at fault
        try:
            check = check_ports if key == "ports" else check_selector
            for item in values[key]:
                check(item)
        except InvalidInput as exc:
            raise fail(lines.rule_key(number, key), exc.message) from None
    return checked_rule(values["from"], values["to"], values["ports"], header)


class Lines:
    """Where the policy's tables and keys are in hub.toml (tomllib gives values, no lines).

    A line scanner good for the simple TOML hub.toml holds: table headers and ``key =``
    at the start of a line. When rules are written some other way (inline tables), every
    rule is placed at its ``allow =`` line, or at none (0) — never at a wrong one.
    """

    _HEADER = re.compile(r"\s*\[(\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
    _KEY = re.compile(r"\s*([A-Za-z0-9_\-\"']+)\s*=")

    def __init__(self, text: str) -> None:
        # (table name, is an array of tables, line, {key: line}); "" is the top level.
        self.tables: list[tuple[str, bool, int, dict[str, int]]] = [("", False, 0, {})]
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                name = ".".join(p.strip().strip("\"'") for p in header.group(2).split("."))
                self.tables.append((name, bool(header.group(1)), number, {}))
                continue
            key = self._KEY.match(line)
            if key:
                self.tables[-1][3].setdefault(key.group(1).strip("\"'"), number)
        self.rules = [t for t in self.tables if t[0] == "policy.allow" and t[1]]

    def expect_rules(self, count: int) -> None:
        if len(self.rules) != count:  # rules not written as [[policy.allow]] tables
            self.rules = [("policy.allow", True, self.policy_key("allow"), {})] * count

    def rule(self, number: int) -> int:
        return self.rules[number - 1][2] if number <= len(self.rules) else 0

    def rule_key(self, number: int, key: str) -> int:
        if number > len(self.rules):
            return 0
        return self.rules[number - 1][3].get(key, self.rules[number - 1][2])

    def policy_key(self, key: str) -> int:
        for name, _, line, _keys in self.tables:
            if name == f"policy.{key}":  # [policy.deny]
                return line
        for name, _, line, keys in self.tables:
            if name == "policy":
                return keys.get(key, line)
        return 0

    @staticmethod
    def where(path: str, line: int) -> str:
        return f"{path} line {line}" if line else path


def load_policy(path: Path, pool_port: int, web_port: int, metrics_port: int = 0) -> Policy:
    """The policy of the hub.toml at ``path``; the default when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return default_policy(pool_port, web_port, metrics_port)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the policy ({exc})") from None
    return policy_from_toml(text, str(path), pool_port, web_port, metrics_port)


def allowing_rule(
    policy: Policy, source: Party, destination: Party, protocol: str, port: int
) -> Rule | None:
    """The first rule that lets ``source`` open ``protocol``/``port`` to ``destination``."""
    return next((r for r in policy.rules if r.allows(source, destination, protocol, port)), None)
