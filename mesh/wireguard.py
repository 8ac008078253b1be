"""WireGuard control: one interface, two backends.

* ``KernelBackend`` creates the interface with ``ip link add … type wireguard``.
* ``UserspaceBackend`` starts ``wireguard-go``, which serves the standard WireGuard UAPI
  socket in ``/var/run/wireguard/<name>.sock``.

Everything after creation (keys, peers, statistics) goes through the ``wg`` tool, which
speaks netlink to the kernel and the UAPI to ``wireguard-go``: one code path for both
backends. The private key is passed on stdin, never on a command line. Because the UAPI
socket directory is machine-wide, interface names must be unique per machine even across
network namespaces.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from hivemind_cluster.core.errors import InvalidInput, SystemFailure
from hivemind_cluster.core.system import run

UAPI_DIR = Path("/var/run/wireguard")
DEFAULT_MTU = 1420
MAX_INTERFACE_NAME = 15
# WireGuard rekeys every 2 minutes while traffic (or keepalives) flow and rejects a session
# after 3 minutes: a peer with no handshake for that long is not connected.
ONLINE_HANDSHAKE_AGE = 180


@dataclass(frozen=True)
class PeerConfig:
    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str = ""
    persistent_keepalive: int = 0


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int = 0  # seconds, 0 = off


class Backend(Protocol):
    name: ClassVar[str]

    @classmethod
    def is_supported(cls) -> bool: ...

    def create(self, interface: str) -> None: ...


def link_exists(interface: str) -> bool:
    return Path("/sys/class/net", interface).exists()


def delete_link(interface: str) -> None:
    if link_exists(interface):
        run(["ip", "link", "delete", "dev", interface], check=False)


class KernelBackend:
    name: ClassVar[str] = "kernel"

    @classmethod
    def is_supported(cls) -> bool:
        if shutil.which("ip") is None:
            return False
        probe = "hmprobe" + secrets.token_hex(3)
        result = subprocess.run(
            ["ip", "link", "add", probe, "type", "wireguard"], capture_output=True, check=False
        )
        if result.returncode == 0:
            subprocess.run(["ip", "link", "delete", probe], capture_output=True, check=False)
        return result.returncode == 0

    def create(self, interface: str) -> None:
        run(["ip", "link", "add", "dev", interface, "type", "wireguard"])


class UserspaceBackend:
    name: ClassVar[str] = "userspace"

    @classmethod
    def is_supported(cls) -> bool:
        return shutil.which("wireguard-go") is not None and Path("/dev/net/tun").exists()

    def create(self, interface: str) -> None:
        socket = UAPI_DIR / f"{interface}.sock"
        if socket.exists() and not link_exists(interface):
            socket.unlink()  # left behind by a wireguard-go that was killed
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        # wireguard-go daemonises: the parent returns once the device and socket exist.
        result = subprocess.run(
            ["wireguard-go", interface],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise SystemFailure(
                f"wireguard-go could not create {interface}: {result.stderr.strip()[-200:]}"
            )
        deadline = time.monotonic() + 5
        while not socket.exists():
            if time.monotonic() > deadline:
                raise SystemFailure(f"wireguard-go did not open its UAPI socket {socket}")
            time.sleep(0.01)


BACKENDS: dict[str, type[KernelBackend] | type[UserspaceBackend]] = {
    "kernel": KernelBackend,
    "userspace": UserspaceBackend,
}


def select_backend(preference: str = "auto") -> KernelBackend | UserspaceBackend:
    """``auto`` probes the kernel first and falls back to wireguard-go."""
    if preference not in ("auto", *BACKENDS):
        raise InvalidInput(
            f"WireGuard backend must be auto, kernel or userspace, not {preference!r}"
        )
    candidates = list(BACKENDS.values()) if preference == "auto" else [BACKENDS[preference]]
    for backend in candidates:
        if backend.is_supported():
            return backend()
    raise SystemFailure(
        "no WireGuard backend available: the kernel has no wireguard module and "
        "wireguard-go is not installed (run `make setup`)"
    )


def check_interface_name(name: str) -> str:
    if (
        not name
        or len(name) > MAX_INTERFACE_NAME
        or not all(c.isalnum() or c in "-_." for c in name)
    ):
        raise InvalidInput(f"interface name {name!r} must be 1-15 letters, digits, - _ .")
    return name


def userspace_pid(interface: str) -> int | None:
    """The pid of the wireguard-go serving ``interface`` (it daemonises, so no child of
    ours), found by its command line: interface names are unique on the machine."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        named = len(argv) >= 2 and argv[-1].decode(errors="replace") == interface
        if named and Path(argv[0].decode(errors="replace")).name == "wireguard-go":
            return int(entry.name)
    return None


def backend_of(interface: str) -> str:
    """Which backend runs an existing interface."""
    return "userspace" if (UAPI_DIR / f"{interface}.sock").exists() else "kernel"


class WireGuardInterface:
    def __init__(self, name: str) -> None:
        self.name = check_interface_name(name)

    def exists(self) -> bool:
        return link_exists(self.name)

    def up(
        self,
        backend: Backend,
        private_key: str,
        address: str,
        listen_port: int | None,
        peers: list[PeerConfig],
        mtu: int = DEFAULT_MTU,
    ) -> None:
        """Create and configure the interface; on any failure nothing is left behind."""
        if self.exists():
            raise SystemFailure(f"interface {self.name} already exists")
        backend.create(self.name)
        try:
            command = ["set", self.name, "private-key", "/dev/stdin"]
            if listen_port:
                command += ["listen-port", str(listen_port)]
            wg(*command, stdin=private_key + "\n")
            for peer in peers:
                self.add_peer(peer)
            run(["ip", "address", "add", address, "dev", self.name])
            run(["ip", "link", "set", "dev", self.name, "mtu", str(mtu), "up"])
        except BaseException:
            self.down()
            raise

    def add_peer(self, peer: PeerConfig) -> None:
        self.set_peer(
            peer.public_key,
            allowed_ips=peer.allowed_ips,
            endpoint=peer.endpoint,
            keepalive=peer.persistent_keepalive or None,
        )

    def set_peer(
        self,
        public_key: str,
        *,
        allowed_ips: tuple[str, ...] | None = None,
        endpoint: str = "",
        keepalive: int | None = None,
    ) -> None:
        """Create the peer or change only the fields given: ``allowed_ips=()`` empties them
        (the peer then carries no traffic but still handshakes), ``keepalive=0`` turns
        persistent keepalive off."""
        wg("set", self.name, *peer_arguments(public_key, allowed_ips, endpoint, keepalive))

    def readd_peer(self, public_key: str, endpoint: str, keepalive: int) -> None:
        """Remove the peer and add it back (no allowed-ips) in one ``wg set``: its session and
        counters start from zero, and with persistent keepalive on, WireGuard sends a
        handshake initiation to ``endpoint`` at once. Works whether or not the peer exists."""
        self.readd_peers([(public_key, endpoint)], keepalive)

    def readd_peers(self, peers: Sequence[tuple[str, str]], keepalive: int) -> None:
        """``readd_peer`` for every ``(public key, endpoint)``, all in one ``wg set`` (one
        process however many peers). wg reads every argument before it changes anything:
        an endpoint it cannot resolve fails the whole call."""
        arguments = []
        for public_key, endpoint in peers:
            again = peer_arguments(public_key, None, endpoint, keepalive)
            arguments += ["peer", public_key, "remove", *again]
        if arguments:
            wg("set", self.name, *arguments)

    def listen_port(self) -> int:
        """The UDP port WireGuard listens on (0 if it has none yet)."""
        text = wg("show", self.name, "listen-port").strip()
        if not text.isdigit() and text:
            raise SystemFailure(f"`wg show {self.name} listen-port` said {text[:40]!r}")
        return int(text or 0)

    def remove_peer(self, public_key: str) -> None:
        wg("set", self.name, "peer", public_key, "remove")

    def reset_peer(self, peer: PeerConfig) -> None:
        """Drop the peer's session and re-add it: the next packet starts a new handshake."""
        self.remove_peer(peer.public_key)
        self.add_peer(peer)

    def public_key(self) -> str:
        """The public key the interface runs with ("" if it is not a WireGuard one)."""
        try:
            return wg("show", self.name, "public-key").strip()
        except SystemFailure:
            return ""

    def peers(self) -> list[PeerStatus]:
        lines = wg("show", self.name, "dump").splitlines()[1:]
        return [parse_dump_line(line) for line in lines if line.strip()]

    def down(self) -> None:
        delete_link(self.name)
        socket = UAPI_DIR / f"{self.name}.sock"
        deadline = time.monotonic() + 2
        while socket.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # wireguard-go removes it when the device goes away
        if socket.exists():
            socket.unlink(missing_ok=True)


def wg(*arguments: str, stdin: str | None = None) -> str:
    """Run ``wg``; every failure, one that hangs past ``run``'s timeout too, is a
    SystemFailure (a caller that keeps going, like the agent's tick, needs no other)."""
    try:
        return run(["wg", *arguments], stdin=stdin)
    except subprocess.TimeoutExpired as exc:
        raise SystemFailure(
            f"`wg {' '.join(arguments[:2])}` did not finish within {exc.timeout:g} s"
        ) from None


def peer_arguments(
    public_key: str, allowed_ips: tuple[str, ...] | None, endpoint: str, keepalive: int | None
) -> list[str]:
    """The ``peer KEY …`` arguments of ``wg set`` for the fields given."""
    arguments = ["peer", public_key]
    if allowed_ips is not None:
        arguments += ["allowed-ips", ",".join(allowed_ips)]
    if endpoint:
        arguments += ["endpoint", endpoint]
    if keepalive is not None:
        arguments += ["persistent-keepalive", str(keepalive) if keepalive else "off"]
    return arguments


def parse_dump_line(line: str) -> PeerStatus:
    """One peer line of ``wg show IFACE dump``."""
    fields = line.split("\t")
    if len(fields) != 8:
        raise SystemFailure(f"unexpected `wg show dump` line: {line!r}")
    public_key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
    try:
        return PeerStatus(
            public_key=public_key,
            endpoint="" if endpoint == "(none)" else endpoint,
            allowed_ips=tuple(a for a in allowed.split(",") if a and a != "(none)"),
            latest_handshake=int(handshake),
            rx_bytes=int(rx),
            tx_bytes=int(tx),
            persistent_keepalive=0 if keepalive == "off" else int(keepalive),
        )
    except ValueError:
        raise SystemFailure(f"unexpected `wg show dump` line: {line!r}") from None


def render_quick_config(
    private_key: str,
    address: str,
    peers: list[PeerConfig],
    listen_port: int | None = None,
    comment: str = "",
) -> str:
    """A ``wg-quick``-compatible configuration (for inspection; contains the private key)."""
    lines = [f"# {comment}"] if comment else []
    lines += ["[Interface]", f"PrivateKey = {private_key}", f"Address = {address}"]
    if listen_port:
        lines.append(f"ListenPort = {listen_port}")
    lines.append(f"MTU = {DEFAULT_MTU}")
    for peer in peers:
        lines += [
            "",
            "[Peer]",
            f"PublicKey = {peer.public_key}",
            f"AllowedIPs = {', '.join(peer.allowed_ips)}",
        ]
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"
