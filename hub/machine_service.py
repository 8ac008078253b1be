"""Where an install of HiveMind goes on a machine, and how its service runs there (a
systemd unit, or the agent started directly where systemd is not running).

Standard library only, like hub/machine_install.py, whose installers carry this file too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROLES = ("hub", "worker", "operator")
EXTRA = {"hub": "hub", "worker": "agent", "operator": "agent"}
SCRIPTS = {
    "hub": ("hivemind-hub", "hivemind", "hivemind-pool"),
    "worker": ("hivemind-agent", "hivemind", "hivemind-pool"),
    "operator": ("hivemind-agent", "hivemind", "hivemind-pool"),
}
STATE_DIRS = {"hub": "/var/lib/hivemind-hub", "agent": "/var/lib/hivemind-agent"}
UNIT_MARK = "# Written by the HiveMind installer"
UNIT = (
    UNIT_MARK
    + """; it rewrites this file when it changes.
[Unit]
Description={description}
After=network-online.target{after}
Wants=network-online.target
# Nothing to run before {condition_text}.
ConditionPathExists={condition}

[Service]
ExecStart={exec_start}
Restart={restart}
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
"""
)
# In the prefix: what an install put where (for uninstall), and a new environment or unit
# the service has not been restarted on yet (a run that failed before the restart).
INSTALLED = "installed.json"
RESTART_PENDING = "restart-pending"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class InstallError(Exception):
    """What stops the install: one line for the person running it."""


def say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def printable(text: str) -> str:
    return CONTROL.sub("?", text)


class Target:
    """Where and what to install, from the command line and the installer's own manifest."""

    def __init__(self, args: argparse.Namespace, bundle: dict[str, Any]) -> None:
        self.role: str = args.role or bundle.get("role") or ""
        if self.role not in ROLES:
            raise InstallError(f"--role must be one of {', '.join(ROLES)}")
        if bundle and self.role == "hub":
            raise InstallError(
                "this installer carries an agent's wheels: install a hub with make install"
            )
        self.agent = self.role != "hub"
        self.wheelhouse = Path(args.wheelhouse or ".")
        self.prefix = Path(args.prefix).absolute()
        self.bin_dir = Path(args.bin_dir)
        self.systemd_dir = Path(args.systemd_dir)
        kind = "agent" if self.agent else "hub"
        self.state_dir = Path(args.state_dir or STATE_DIRS[kind]).absolute()
        self.unit = args.unit or f"hivemind-{kind}"
        if args.token == "-":  # on stdin: never in a process list
            args.token = sys.stdin.readline().strip()
        self.token: str | None = args.token or bundle.get("token")
        expires = bundle.get("expires")
        self.token_expires = float(expires) if expires and not args.token else None
        if args.token is None and bundle.get("token") and args.role not in (None, bundle["role"]):
            raise InstallError(
                f"the token inside is for a {bundle['role']}: make an installer with --role "
                f"{args.role} on the hub"
            )
        self.name: str | None = args.name
        self.interface: str | None = args.interface
        self.endpoint: str | None = getattr(args, "endpoint", None)
        if self.endpoint and self.agent:
            raise InstallError("--endpoint is for a hub (an agent's hub is in its token)")
        self.service_manager: str = args.service_manager
        if self.service_manager == "auto":
            running = Path("/run/systemd/system").is_dir() and shutil.which("systemctl")
            self.service_manager = "systemd" if running else "direct"
        self.venv = self.prefix / "venv"

    def script(self, name: str) -> Path:
        return self.venv / "bin" / name

    @property
    def enrolled_marker(self) -> Path:
        return self.state_dir / ("agent.json" if self.agent else "hub.toml")


def offline_pip_environment() -> dict[str, str]:
    """The environment for pip with only the wheels it is given: none of this machine's pip
    settings (an index, more find-links) from its configuration files or ``PIP_*``."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return {**kept, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if result.returncode:
        lines = (result.stderr.strip() or result.stdout.strip() or "(no output)").splitlines()
        raise InstallError(f"{what} failed: {printable(lines[-1])}")
    return result.stdout


def unit_text(target: Target) -> str:
    if target.agent:
        command, description, restart = "hivemind-agent run", "HiveMind agent", "always"
        after, condition_text = " docker.service", "the machine has joined"
    else:
        command, description, restart = "hivemind-hub up", "HiveMind hub", "on-failure"
        after, condition_text = "", "`hivemind-hub init`"
    return UNIT.format(
        description=description,
        after=after,
        condition=target.enrolled_marker,
        condition_text=condition_text,
        exec_start=f"{target.venv}/bin/{command} --state-dir {target.state_dir}",
        restart=restart,
    )


def ensure_unit(target: Target) -> bool:
    path = target.systemd_dir / f"{target.unit}.service"
    text = unit_text(target)
    if path.exists() and path.read_text() == text:
        return False
    target.systemd_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)
    return True


def ensure_running(target: Target, restart: bool) -> list[str]:
    """Enable the unit and run the service (when it can run yet), restarted when ``restart``
    (a new environment or unit since it last started); what that changed."""
    ready = target.enrolled_marker.exists()
    if target.service_manager == "none":
        return []
    if target.service_manager == "systemd":
        return systemd_service(target, ready, restart)
    if not ready or not target.agent:  # a hub without systemd runs `hivemind-hub up` itself
        return []
    pid = service_pid(target)
    if pid is not None and not restart:
        return []
    if pid is not None:
        stop_process(pid)
    say(f"starting {target.unit} directly (systemd is not running here: not at boot)")
    exec_start = unit_text(target).split("ExecStart=", 1)[1].splitlines()[0].split()
    with open(target.state_dir / "agent.log", "ab") as log:
        subprocess.Popen(
            exec_start,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while service_pid(target) is None:
        if time.monotonic() > deadline:
            raise InstallError(f"{target.unit} did not start: see {log.name}")
        time.sleep(0.2)
    return [f"started {target.unit}"]


def systemd_service(target: Target, ready: bool, restart: bool) -> list[str]:
    changes = []
    if restart:
        run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    enabled = subprocess.run(["systemctl", "is-enabled", "-q", target.unit]).returncode == 0
    if not enabled:
        run(["systemctl", "enable", "-q", target.unit], "systemctl enable")
        changes.append(f"enabled {target.unit}")
    if not ready:
        return changes
    active = subprocess.run(["systemctl", "is-active", "-q", target.unit]).returncode == 0
    if active and restart:
        run(["systemctl", "restart", target.unit], "systemctl restart")
        changes.append(f"restarted {target.unit}")
    elif not active:
        run(["systemctl", "start", target.unit], "systemctl start")
        changes.append(f"started {target.unit}")
    return changes


def service_pid(target: Target) -> int | None:
    """The running agent service's pid, from the pid file it keeps in its state directory."""
    try:
        pid = int((target.state_dir / "agent.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop_process(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def ours(link: Path, target: Target) -> bool:
    return link.is_symlink() and str(os.readlink(link)).startswith(str(target.prefix) + "/")


def uninstall(target: Target) -> dict[str, Any]:
    """Undo ``install`` (what its ``installed.json`` names); the state directory (the
    machine's identity) stays."""
    changes: list[str] = []
    unit = target.systemd_dir / f"{target.unit}.service"
    ours_unit = unit.exists() and unit.read_bytes().startswith(UNIT_MARK.encode())
    if target.service_manager == "systemd" and ours_unit:
        run(["systemctl", "disable", "--now", "-q", target.unit], "systemctl disable")
        changes.append(f"stopped and disabled {target.unit}")
    elif target.agent:
        pid = service_pid(target)
        if pid is not None:
            stop_process(pid)
            changes.append(f"stopped {target.unit} (pid {pid})")
    if ours_unit:
        unit.unlink()
        changes.append(f"removed {unit}")
        if target.service_manager == "systemd":
            run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    for name in SCRIPTS[target.role]:
        link = target.bin_dir / name
        if ours(link, target):
            link.unlink()
            changes.append(f"removed {link}")
    if target.venv.is_symlink():
        target.venv.unlink()
        changes.append(f"removed {target.venv}")
    parts = ["venvs", RESTART_PENDING, INSTALLED] + ([] if target.agent else ["wheelhouse"])
    for part in parts:
        path = target.prefix / part
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        if part != INSTALLED and part != RESTART_PENDING:
            changes.append(f"removed {path}")
    if target.prefix.is_dir() and not any(target.prefix.iterdir()):
        target.prefix.rmdir()
    if target.state_dir.exists():
        say(f"kept {target.state_dir} (this machine's identity; delete it to forget it)")
    return {"changed": changes, "role": target.role, "prefix": str(target.prefix)}


def installed_record(prefix: Path) -> dict[str, Any]:
    """What an earlier install here recorded ({} when none did)."""
    try:
        record = json.loads((prefix / INSTALLED).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
