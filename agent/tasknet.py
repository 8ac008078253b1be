"""Tasks with network get the outside world only: the worker's nftables table for Docker.

Docker masquerades a container on its bridge as the worker, so without this a task with
network (hub setting ``allow_task_network``) reaches every overlay address through the
worker's WireGuard interface — the hub's Redis, pool and web, an operator's laptop — the
worker's own services on all its addresses, and the hub's enrollment and WireGuard ports on
the underlay. The table this agent owns drops, for packets coming from a Docker bridge
(``docker0``, ``br-*`` and whatever Docker names its bridges), forwarded ones to the overlay
range, out the WireGuard interface or to the hub's underlay addresses (it is "outside world"
but it is the hub: the enrollment port is no business of a task's), and new connections to
the worker itself (its overlay and underlay addresses, the bridge's gateway). Replies to
connections the host opens stay allowed.

The service installs the table before the worker takes tasks and removes it when it stops
(agent/service.py); a killed agent leaves it in place, which only keeps protecting, and the
next start replaces it. ``GuardedExecutor`` runs a task with network only while the table is
in place — checked, and put back if something removed it, before each such task — and
otherwise fails it with a clear error rather than run it unprotected.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hivemind_cluster.agent.attemptrun import Executor
from hivemind_cluster.agent.state import Enrollment
from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun, never_ran
from hivemind_cluster.core import nftables
from hivemind_cluster.core.errors import InvalidInput, SystemFailure
from hivemind_cluster.core.settings import split_host_port

if TYPE_CHECKING:
    import docker

log = logging.getLogger("hivemind.agent.tasknet")

# The default bridge and the bridges of user-defined networks, as Docker names them.
BRIDGE_PATTERNS = ("docker0", "br-*")
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
WITHOUT_NFT = (
    "nft is not installed, so a task with network would reach the overlay; "
    "install nftables (`make setup`)"
)


def table_name(interface: str) -> str:
    """The agent's table, named after its interface, beside the hub's ``hivemind_<if>``."""
    return nftables.table_name(f"tasks_{interface}")


def ruleset(
    table: str, bridges: Iterable[str], interface: str, overlay: str, hub: Iterable[str]
) -> str:
    """The table: ``bridges`` are interface names (nft wildcards allowed), ``hub`` the
    hub's underlay addresses."""
    from_bridges = "iifname { " + ", ".join(f'"{name}"' for name in bridges) + " }"
    to_hub = "".join(
        f"    {from_bridges} {'ip6' if ':' in address else 'ip'} daddr {address} drop\n"
        for address in hub
    )
    return f"""table inet {table} {{
  chain forward {{
    type filter hook forward priority -10; policy accept;
    {from_bridges} ip daddr {overlay} drop
    {from_bridges} oifname "{interface}" drop
{to_hub}  }}
  chain input {{
    type filter hook input priority -10; policy accept;
    {from_bridges} ct state != {{ established, related }} drop
  }}
}}
"""


def hub_addresses(enrollment: Enrollment) -> list[str]:
    """The hub's underlay addresses: those of its WireGuard and enrollment endpoints (a
    name is resolved now; one that does not resolve is left out, with a warning)."""
    found: list[str] = []
    for endpoint in (enrollment.hub_endpoint, enrollment.enroll_endpoint):
        try:
            host, _ = split_host_port(endpoint, 0)
        except InvalidInput:
            continue
        found += [address for address in addresses_of(host) if address not in found]
    return found


def addresses_of(host: str) -> list[str]:
    """``host`` itself when it is an address, else what it resolves to."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        answers = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as error:
        log.warning("cannot resolve the hub's %s (%s): tasks may reach it", host, error)
        return []
    return [str(ipaddress.ip_address(str(answer[4][0]).split("%")[0])) for answer in answers]


@dataclass(frozen=True)
class Bridges:
    """The interfaces to guard (nft wildcards allowed) and the default bridge, the one
    tasks' containers use."""

    names: tuple[str, ...] = BRIDGE_PATTERNS
    default: str = "docker0"


def docker_bridges(client: docker.DockerClient | None) -> Bridges:
    """BRIDGE_PATTERNS plus the bridges Docker names otherwise (``"bridge"`` in
    daemon.json); the patterns alone when Docker does not answer."""
    if client is None:
        return Bridges()
    import docker.errors
    import requests

    try:
        networks = client.networks.list(filters={"driver": "bridge"})
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        log.warning("cannot list Docker's networks (%s); guarding %s", error, BRIDGE_PATTERNS)
        return Bridges()
    names, default = list(BRIDGE_PATTERNS), "docker0"
    for network in networks:
        name = (network.attrs.get("Options") or {}).get(BRIDGE_NAME_OPTION, "")
        if not INTERFACE_NAME.match(name):
            continue
        if network.name == "bridge":
            default = name
        if name not in names and not name.startswith("br-"):
            names.append(name)
    return Bridges(tuple(names), default)


def bridge_is_here(name: str) -> bool:
    """Whether the interface is in this network namespace: when Docker's bridge is not
    (a daemon in another namespace, rootless Docker), rules here never see its traffic."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def remove_task_network_rules(interface: str) -> None:
    """The one place the table goes: when the agent stops, after its tasks have."""
    nftables.delete_table(table_name(interface))


class TaskNetworkGuard:
    """The agent's table keeping Docker's bridges off the overlay, the hub and this host.

    ``refusal`` is "" while the table is in place, else why tasks with network must not
    run; safe to use from the task threads.
    """

    def __init__(self, enrollment: Enrollment, client: docker.DockerClient | None) -> None:
        self.enrollment = enrollment
        self.client = client
        self.table = table_name(enrollment.interface)
        self.bridges = Bridges()
        self.refusal = "the agent has not installed its rules for tasks with network"
        self._lock = threading.Lock()

    def rules(self) -> str:
        enrollment = self.enrollment
        overlay = str(ipaddress.ip_interface(enrollment.address).network)
        hub = hub_addresses(enrollment)
        return ruleset(self.table, self.bridges.names, enrollment.interface, overlay, hub)

    def install(self) -> None:
        """Load the table; when that fails, remember why (and say it once, in the log)."""
        with self._lock:
            self._install()

    def _install(self) -> None:
        self.bridges = docker_bridges(self.client)
        try:
            nftables.load_table(self.table, self.rules(), WITHOUT_NFT)
            if not bridge_is_here(self.bridges.default):
                raise SystemFailure(
                    f"Docker's bridge {self.bridges.default} is not in the agent's network "
                    "namespace (Docker is not running, or runs in another one), so the "
                    "agent's rules would not see its containers' traffic"
                )
        except SystemFailure as failure:
            if failure.message != self.refusal:
                log.error("tasks with network will be refused: %s", failure.message)
            self.refusal = failure.message
            return
        self.refusal = ""
        log.info("tasks with network kept off the overlay (nftables table %s)", self.table)

    def why_unsafe(self) -> str:
        """ "" when tasks with network may run: the table is in place (loaded again first
        if that failed before or something removed it), else why not."""
        with self._lock:
            if self.refusal or not nftables.table_exists(self.table):
                if not self.refusal:
                    log.warning("nftables table %s disappeared; loading it again", self.table)
                self._install()
            return self.refusal


class GuardedExecutor:
    """The worker's executor: a task with network runs only while the guard is in place."""

    def __init__(self, executor: Executor, network_guard: TaskNetworkGuard) -> None:
        self.executor = executor
        self.network_guard = network_guard

    def run(self, task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        if task.network:
            unsafe = self.network_guard.why_unsafe()
            if unsafe:
                return never_ran(
                    "this worker refuses tasks with network: it cannot keep them off the "
                    f"overlay ({unsafe})"
                )
        return self.executor.run(task, on_output, cancel)
