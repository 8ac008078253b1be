"""The hub's record of each member as the others see it, and the checks on what reaches it.

Two things come from outside the hub's own state and are checked here before they can
touch it: the node hashes in Redis (a corrupt one must cost that node only, never stop the
updates of everyone else) and the endpoints members report about themselves (they go to
every other member's WireGuard, so only a plain public-or-private ``IPv4:port`` outside the
overlay passes). ``EndpointTurns`` spaces out each member's endpoint changes: one member
changing its list in a loop must not wake every stream at every report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.mesh import nodes
from hivemind_cluster.mesh.policy import Party
from hivemind_cluster.protos import mesh_pb2

MAX_ENDPOINTS = 8  # endpoint candidates a member may report
ENDPOINT_INTERVAL = 5.0  # seconds: at most one endpoint change of a member this often
RECORD_FIELDS = ["id", "name", "role", "overlay_ip", "wg_public_key", "state", "labels"]
MEMBER_ROLES = ("worker", "operator")
PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: "²".isdigit() is True, int("²") fails
BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclasses.dataclass(frozen=True)
class Member:
    """An active member as every other member sees it."""

    node_id: str
    name: str
    role: str
    public_key: str
    overlay_ip: str
    labels: tuple[tuple[str, str], ...] = ()
    observed: str = ""  # its endpoint as the hub's WireGuard sees it
    reported: tuple[str, ...] = ()  # the ones it reports itself

    def endpoints(self) -> list[str]:
        """Candidates best first: the hub-observed one, then its own, each once."""
        return list(dict.fromkeys(e for e in (self.observed, *self.reported) if e))

    def to_proto(self) -> mesh_pb2.MeshPeer:
        return mesh_pb2.MeshPeer(
            node_id=self.node_id,
            name=self.name,
            role=self.role,
            public_key=self.public_key,
            overlay_ip=self.overlay_ip,
            endpoints=self.endpoints(),
            labels=dict(self.labels),
        )

    def party(self) -> Party:
        return Party(self.node_id, self.name, self.role, self.overlay_ip, dict(self.labels))


def member_of_record(
    record: Mapping[str, str | None], observed: str, reported: tuple[str, ...]
) -> Member | None:
    """The member a node hash (its RECORD_FIELDS) describes, None unless active.
    InvalidInput (one line) when the record is corrupt: its fields end up in every
    member's WireGuard and in the hub's nft rules, so nothing doubtful passes."""
    if record.get("state") != nodes.ACTIVE or not record.get("id"):
        return None
    node_id = record["id"]
    texts = {name: record.get(name) or "" for name in RECORD_FIELDS}
    missing = [name for name in ("name", "role", "overlay_ip", "wg_public_key") if not texts[name]]
    if missing:
        raise InvalidInput(f"node {node_id}'s record lacks {', '.join(missing)}")
    if texts["role"] not in MEMBER_ROLES:
        raise InvalidInput(f"node {node_id}'s record has an unknown role")
    try:
        overlay_ip = str(ipaddress.IPv4Address(texts["overlay_ip"]))
        labels = json.loads(texts["labels"] or "{}")
    except ValueError as exc:  # json.JSONDecodeError is one
        raise InvalidInput(f"node {node_id}'s record is corrupt: {type(exc).__name__}") from exc
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidInput(f"node {node_id}'s labels are not an object of texts")
    return Member(
        str(node_id),
        texts["name"],
        texts["role"],
        texts["wg_public_key"],
        overlay_ip,
        tuple(sorted(labels.items())),
        observed,
        reported,
    )


def endpoint_problem(text: str, overlay: ipaddress.IPv4Network) -> str:
    """Why ``text`` may not be handed out as an endpoint ("" if it may)."""
    host, _, port = text.rpartition(":")
    if not PORT.fullmatch(port) or not 0 < int(port) < 65536:
        return "not IPv4:PORT with a port 1..65535"
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return "not IPv4:PORT with a port 1..65535"
    if address.is_loopback or address.is_link_local or address.is_multicast:
        return "a loopback, link-local or multicast address"
    if address.is_unspecified or address == BROADCAST:
        return "an unspecified or broadcast address"
    if address in overlay:
        return "inside the overlay"
    return ""


def checked_endpoints(
    texts: Iterable[str], overlay: ipaddress.IPv4Network
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the candidates that may be handed out, each once, at most MAX_ENDPOINTS; the ones
    refused). The caller has capped ``texts`` already (see ``capped``)."""
    kept: list[str] = []
    refused: list[str] = []
    for text in texts:
        if endpoint_problem(text, overlay):
            refused.append(text)
        else:
            host, _, port = text.rpartition(":")
            kept.append(f"{ipaddress.IPv4Address(host)}:{int(port)}")
    return tuple(dict.fromkeys(kept))[:MAX_ENDPOINTS], tuple(refused)


def capped(report: mesh_pb2.MemberReport, members: int) -> mesh_pb2.MemberReport:
    """The report cut to what a member can honestly send, before anything loops over it:
    twice MAX_ENDPOINTS endpoints (duplicates, refused ones) and a path per other member."""
    del report.endpoints[2 * MAX_ENDPOINTS :]
    del report.paths[max(members, 1) :]
    return report


def shown(text: str) -> str:
    """Untrusted text as a log line may carry it: quoted, short."""
    return repr(text[:64])


def parties_differ(old: Member | None, new: Member | None) -> bool:
    """Does the change matter to the policy's rules (not just an endpoint)?"""
    return (old.party() if old else None) != (new.party() if new else None)


class EndpointTurns:
    """At most one endpoint change per member every ENDPOINT_INTERVAL. A change within the
    interval waits for its turn, replaced by any later one: the final state always lands,
    only the ones in between are skipped."""

    def __init__(
        self,
        apply: Callable[[str, tuple[str, ...]], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.apply = apply  # (node id, endpoints): the change, now; False if none
        self.clock = clock
        self.last: dict[str, float] = {}  # node id -> when its last change was applied
        self.waiting: dict[str, tuple[str, ...]] = {}  # node id -> its latest, not applied
        self.timers: dict[str, asyncio.TimerHandle] = {}

    def offer(self, node_id: str, endpoints: tuple[str, ...], current: tuple[str, ...]) -> None:
        """``endpoints`` reported by the member whose applied ones are ``current``."""
        if node_id in self.waiting:
            self.waiting[node_id] = endpoints  # applied (if still different) at its turn
            return
        if endpoints == current:
            return
        wait = self.last.get(node_id, -ENDPOINT_INTERVAL) + ENDPOINT_INTERVAL - self.clock()
        if wait <= 0:
            if self.apply(node_id, endpoints):
                self.last[node_id] = self.clock()
            return
        self.waiting[node_id] = endpoints
        loop = asyncio.get_running_loop()
        self.timers[node_id] = loop.call_later(wait, self.turn, node_id)

    def turn(self, node_id: str) -> None:
        self.timers.pop(node_id, None)
        endpoints = self.waiting.pop(node_id, None)
        if endpoints is not None and self.apply(node_id, endpoints):
            self.last[node_id] = self.clock()

    def forget(self, node_id: str) -> None:
        """The node is no longer a member: nothing of it waits."""
        self.last.pop(node_id, None)
        self.waiting.pop(node_id, None)
        if (timer := self.timers.pop(node_id, None)) is not None:
            timer.cancel()

    def close(self) -> None:
        for node_id in list(self.timers):
            self.forget(node_id)
