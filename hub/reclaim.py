"""What a running ``up`` has changed on the machine, and how the next ``up`` takes it back
when the hub died without undoing it (power loss, OOM kill, kill -9).

``up`` notes in ``up.json`` (state directory) each change before or as it makes it: the
WireGuard interface and its wireguard-go, the nftables tables (the underlay guard, the
policy), ``ip_forward``, Redis, the web. A clean stop removes the file. The next ``up``
finding it reclaims only what the file names *and* it can prove was its predecessor's: a
process whose pid, start time and executable match, in this boot; the configured
interface, in the same network namespace, running with the hub's own WireGuard key.
Anything else is left alone.

Which ``up`` may run is settled by a lock on the state directory, held for the hub's life
and released by the kernel however it ends: a live hub is never reclaimed, a second ``up``
is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hivemind_cluster.core import names
from hivemind_cluster.core.errors import AlreadyExists
from hivemind_cluster.core.files import write_private
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.system import write_sysctl
from hivemind_cluster.hub.processes import ProcessIdentity, current_boot, executable
from hivemind_cluster.mesh import guard, policyrules, relaycount
from hivemind_cluster.mesh.wireguard import WireGuardInterface

log = logging.getLogger("hivemind.hub")


def network_namespace() -> str:
    """This process's network namespace: a predecessor's interface is only ours to delete
    (and visible at all) from the same one."""
    found = os.stat("/proc/self/ns/net")
    return f"{found.st_dev}:{found.st_ino}"


class UpRecord:
    """``up.json`` of the running hub, with the state directory's lock."""

    def __init__(self, path: Path, lock: int) -> None:
        self.path = path
        self.lock = lock
        self.data: dict[str, Any] = {}

    def note(self, **fields: Any) -> None:
        """Add ``fields`` (a ``ProcessIdentity`` as its JSON) and write the file through:
        a crash right after this leaves them on disk."""
        for key, value in fields.items():
            self.data[key] = value.as_json() if isinstance(value, ProcessIdentity) else value
        write_private(self.path, json.dumps(self.data, sort_keys=True))

    def close(self) -> None:
        """After a clean stop: nothing is left to reclaim; another hub may start."""
        self.path.unlink(missing_ok=True)
        os.close(self.lock)


def claim(settings: HubSettings, wg_public_key: str) -> UpRecord:
    """The state directory for this ``up``: refused while another hub runs from it; what
    a dead one left behind is reclaimed first."""
    path = settings.path / names.UP_RECORD
    lock = os.open(settings.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        pid = recorded_pid(read(path))
        raise AlreadyExists(
            f"a hub is already running from {settings.state_dir} (pid {pid}); "
            "stop it first (SIGTERM)"
        ) from None
    try:
        previous = read(path)
        if previous:
            reclaim(previous, settings, wg_public_key)
        (settings.path / names.RUN_FILE).unlink(missing_ok=True)
        record = UpRecord(path, lock)
        hub = ProcessIdentity.of(os.getpid(), executable(sys.executable))
        record.note(hub=hub, boot=current_boot(), netns=network_namespace())
    except BaseException:
        os.close(lock)
        raise
    return record


def read(path: Path) -> dict[str, Any]:
    """The record a hub left ({} if none, or unreadable: then nothing is proven ours)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def recorded_pid(record: dict[str, Any]) -> object:
    """The pid of the hub that wrote ``record`` ("?" if it says none)."""
    hub = record.get("hub")
    return hub.get("pid", "?") if isinstance(hub, dict) else "?"


def reclaim(previous: dict[str, Any], settings: HubSettings, wg_public_key: str) -> None:
    """Undo what the dead hub of ``previous`` left: its processes, then its network."""
    if previous.get("boot") != current_boot():
        log.info("the previous hub ran before a reboot: none of its processes is left")
        return
    log.warning(
        "the previous hub (pid %s) died without stopping: reclaiming what it left",
        recorded_pid(previous),
    )
    for name in ("web", "redis"):  # the children first; wireguard-go goes with the network
        stop_leftover(name, previous.get(name))
    if previous.get("netns") != network_namespace():
        log.warning("the previous hub ran in another network namespace: its network is left")
    else:
        reclaim_network(previous, settings, wg_public_key)
    stop_leftover("wireguard_go", previous.get("wireguard_go"))


def stop_leftover(name: str, recorded: Any) -> None:
    identity = ProcessIdentity.from_json(recorded)
    if identity is not None and identity.is_running():
        log.warning("stopping %s (pid %d) left by the previous hub", name, identity.pid)
        identity.terminate()


def reclaim_network(previous: dict[str, Any], settings: HubSettings, wg_public_key: str) -> None:
    """The interface (when it is the configured one and runs with the hub's key), the
    underlay guard's table and ``ip_forward`` as they were before the dead hub."""
    name = previous.get("interface")
    if name != settings.interface:
        if name:
            log.warning(
                "the previous hub ran interface %s, not %s: left alone", name, settings.interface
            )
        return
    if previous.get("guard"):
        guard.remove(name)
    if previous.get("policy_table"):
        policyrules.remove(name)
    if previous.get("relay_counters"):
        relaycount.remove(name)
    before = previous.get("ip_forward_before")
    if before in ("0", "1"):
        write_sysctl("net.ipv4.ip_forward", before)
    interface = WireGuardInterface(name)
    if not interface.exists():
        return
    if interface.public_key() != wg_public_key:
        log.warning("interface %s does not run with this hub's key: left alone", name)
        return
    log.warning("deleting interface %s left by the previous hub", name)
    interface.down()
