"""Install HiveMind on this machine from a wheelhouse, offline: the program inside every
installer ``hivemind-hub installer`` writes, and what ``make install`` runs on a clone.

Standard library only, and plain enough for an older ``python3`` to say why it cannot go
on: it runs before HiveMind is installed. Every check comes before the first change. The
virtual environment is built in a directory of its own, ``<prefix>/venvs/<digest>``, and
``<prefix>/venv`` is switched to it by one rename, so a failed run leaves what was there; a
run that finds everything in place changes nothing and says so.

    python3 machine_install.py --wheelhouse DIR --role worker [TOKEN] [--prefix /opt/hivemind]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__:
    from hivemind_cluster.hub import machine_service as service
else:  # run as a script (an installer, make install): machine_service.py is beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import machine_service as service  # type: ignore[import-not-found, no-redef, unused-ignore]


# command -> the Debian package that provides it, for every role and for some.
COMMON_COMMANDS = {"wg": "wireguard-tools", "ip": "iproute2"}
ROLE_COMMANDS = {
    "hub": {"nft": "nftables", "redis-server": "redis-server"},
    "worker": {"docker": "docker.io"},
    "operator": {},
}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def read_wheelhouse(directory: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((directory / "wheelhouse.json").read_text())
    except (OSError, ValueError) as error:
        raise service.InstallError(f"{directory} is not a HiveMind wheelhouse ({error})") from None
    if not isinstance(manifest, dict):
        raise service.InstallError(f"{directory} is not a HiveMind wheelhouse (not an object)")
    return manifest


def check_machine(target: service.Target, wheelhouse: dict[str, Any]) -> list[str]:
    """Every reason not to start, before anything changes; returns the missing packages."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if here != wheelhouse.get("python"):
        raise service.InstallError(
            f"these wheels are for Python {wheelhouse.get('python')} and this machine's "
            f"python3 is {here}: make the installer on a hub with Python {here}"
        )
    if target.token is not None and not looks_like_a_token(target.token):
        raise service.InstallError("that is not a join token (hm1_…)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise service.InstallError("run this as root (sudo)")
    expires = target.token_expires
    if target.token is not None and expires and expires < time.time():
        raise service.InstallError(
            "the join token inside expired at "
            + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
            + ": make a new installer on the hub, or pass a token (sh FILE -)"
        )
    for path in (target.prefix, target.state_dir):
        if any(c.isspace() for c in str(path)):
            raise service.InstallError(f"{path}: a path with spaces is not supported")
    if platform.machine() != wheelhouse.get("machine"):
        raise service.InstallError(
            f"these wheels are for {wheelhouse.get('machine')} and this machine is "
            f"{platform.machine()}"
        )
    for name in service.SCRIPTS[target.role]:
        link = target.bin_dir / name
        if (link.exists() or link.is_symlink()) and not service.ours(link, target):
            raise service.InstallError(f"{link} exists and was not installed here: remove it first")
    if target.venv.exists() and not target.venv.is_symlink():
        raise service.InstallError(f"{target.venv} was not made by this installer: remove it")
    return missing_packages(target.role)


def looks_like_a_token(text: str) -> bool:
    """``hm1_`` and base64url of JSON with its checksum (mesh/tokens.py; the hub checks the
    rest when the machine joins)."""
    text = text.strip()
    body = text[4:]
    if not text.startswith("hm1_") or not re.fullmatch(r"[A-Za-z0-9_-]{16,4096}", body):
        return False
    try:
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:  # binascii.Error: a length no base64 has
        return False
    return hashlib.sha256(blob[:-4]).digest()[:4] == blob[-4:]


def missing_packages(role: str) -> list[str]:
    """The Debian packages of commands this machine lacks (any distribution may have them)."""
    commands = {**COMMON_COMMANDS, **ROLE_COMMANDS[role]}
    missing = [pkg for cmd, pkg in commands.items() if not shutil.which(cmd, path=SYSTEM_PATH)]
    if not wireguard_module_available() and not shutil.which("wireguard-go", path=SYSTEM_PATH):
        missing.append("wireguard-go")
    if subprocess.run([sys.executable, "-c", "import ensurepip"], capture_output=True).returncode:
        missing.append("python3-venv")
    return missing


def wireguard_module_available() -> bool:
    if Path("/sys/module/wireguard").exists():
        return True
    modprobe = shutil.which("modprobe", path=SYSTEM_PATH)
    return modprobe is not None and subprocess.run([modprobe, "-nq", "wireguard"]).returncode == 0


def install_packages(missing: list[str]) -> None:
    if not shutil.which("apt-get", path=SYSTEM_PATH):
        raise service.InstallError(
            f"this machine needs {' '.join(missing)} and has no apt-get: install them, then "
            "run this again"
        )
    service.say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise service.InstallError(
            f"apt-get could not install {' '.join(missing)} ({service.printable(last)}): install "
            "them, then run this again"
        )


def wheelhouse_digest(target: service.Target) -> str:
    """What the environment is built from: the extra and every wheel's content."""
    digest = hashlib.sha256(service.EXTRA[target.role].encode())
    for wheel in sorted(target.wheelhouse.glob("*.whl")):
        digest.update(wheel.name.encode())
        with open(wheel, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def ensure_environment(target: service.Target, wheelhouse: dict[str, Any]) -> bool:
    """``<prefix>/venv`` -> ``venvs/<digest>`` holding HiveMind with the role's extra."""
    digest = wheelhouse_digest(target)
    built = target.prefix / "venvs" / digest
    if target.venv.is_symlink() and os.readlink(target.venv) == f"venvs/{digest}":
        check = [str(built / "bin" / "python"), "-c", "import hivemind_cluster"]
        if subprocess.run(check, capture_output=True).returncode == 0:
            return False
    version = wheelhouse.get("hivemind", "?")
    service.say(
        f"installing HiveMind {version} [{service.EXTRA[target.role]}] into {built} (offline)"
    )
    shutil.rmtree(built, ignore_errors=True)
    built.parent.mkdir(parents=True, exist_ok=True)
    try:
        service.run([sys.executable, "-m", "venv", str(built)], "python3 -m venv")
        pip = [str(built / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index"]
        requirement = f"hivemind-cluster[{service.EXTRA[target.role]}]=={version}"
        env = service.offline_pip_environment()
        service.run([*pip, "--find-links", str(target.wheelhouse), requirement], "pip install", env)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    swap = target.prefix / "venv.new"
    swap.unlink(missing_ok=True)
    swap.symlink_to(f"venvs/{digest}")
    (target.prefix / service.RESTART_PENDING).touch()  # kept until the service runs the new one
    os.replace(swap, target.venv)
    return True


def prune_environments(target: service.Target) -> None:
    """Remove the environments the link no longer points to (once the service moved on)."""
    current = os.readlink(target.venv).rpartition("/")[2]
    for old in (target.prefix / "venvs").iterdir():
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def record_install(target: service.Target) -> None:
    record = {
        "role": target.role,
        "unit": target.unit,
        "bin_dir": str(target.bin_dir),
        "systemd_dir": str(target.systemd_dir),
        "state_dir": str(target.state_dir),
    }
    path = target.prefix / service.INSTALLED
    text = json.dumps(record, indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def ensure_links(target: service.Target) -> bool:
    changed = False
    target.bin_dir.mkdir(parents=True, exist_ok=True)
    for name in service.SCRIPTS[target.role]:
        link, points_to = target.bin_dir / name, str(target.script(name))
        if link.is_symlink() and os.readlink(link) == points_to:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(points_to)
        changed = True
    return changed


def ensure_joined(target: service.Target) -> dict[str, Any] | None:
    """Join with the token unless this machine is enrolled; the join's ``--json``."""
    if not target.agent or target.enrolled_marker.exists() or target.token is None:
        return None
    service.say("joining the overlay")
    argv = [str(target.script("hivemind-agent")), "join", "-", "--json", "--no-service"]
    argv += ["--state-dir", str(target.state_dir)]
    argv += ["--name", target.name] if target.name else []
    argv += ["--interface", target.interface] if target.interface else []
    result = subprocess.run(argv, input=target.token, capture_output=True, text=True)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise service.InstallError(
            f"the join failed: {service.printable(last.removeprefix('error: '))}"
        )
    joined: dict[str, Any] = json.loads(result.stdout)
    return joined


def ensure_initialised(target: service.Target) -> bool:
    """``hivemind-hub init`` with ``--endpoint`` on a hub that has none yet (never again)."""
    if target.agent or not target.endpoint:
        return False
    if target.enrolled_marker.exists():
        service.say(f"{target.state_dir} holds a hub already: its endpoint stays as it is")
        return False
    service.say("initialising the hub")
    argv = [str(target.script("hivemind-hub")), "init", "--state-dir", str(target.state_dir)]
    argv += ["--endpoint", target.endpoint]
    argv += ["--name", target.name] if target.name else []
    argv += ["--interface", target.interface] if target.interface else []
    service.run(argv, "hivemind-hub init")
    return True


def install(target: service.Target) -> dict[str, Any]:
    """Check, then bring every part into place; what changed, for the summary."""
    wheelhouse = read_wheelhouse(target.wheelhouse)
    missing = check_machine(target, wheelhouse)
    changes = []
    if missing:
        install_packages(missing)
        changes.append(f"installed {' '.join(missing)}")
    target.prefix.mkdir(parents=True, exist_ok=True)
    new_environment = ensure_environment(target, wheelhouse)
    if new_environment:
        changes.append(f"installed HiveMind {wheelhouse.get('hivemind')} in {target.prefix}")
    if not target.agent and keep_wheelhouse(target):
        changes.append(f"kept the wheelhouse in {target.prefix / 'wheelhouse'} for installers")
    if ensure_links(target):
        changes.append(f"linked {', '.join(service.SCRIPTS[target.role])} in {target.bin_dir}")
    record_install(target)
    joined = ensure_joined(target)
    if joined:
        changes.append(f"joined as {joined['node_id']} at {joined['overlay_ip']}")
    if ensure_initialised(target):
        changes.append(f"initialised the hub in {target.state_dir} (endpoint {target.endpoint})")
    if service.ensure_unit(target):
        (target.prefix / service.RESTART_PENDING).touch()
        changes.append(f"wrote {target.systemd_dir / target.unit}.service")
    pending = target.prefix / service.RESTART_PENDING
    changes += service.ensure_running(target, pending.exists())
    if target.enrolled_marker.exists() or target.service_manager == "none":
        pending.unlink(missing_ok=True)
    prune_environments(target)
    return {
        "changed": changes,
        "role": target.role,
        "hivemind": wheelhouse.get("hivemind"),
        "prefix": str(target.prefix),
        "state_dir": str(target.state_dir),
        "joined": target.enrolled_marker.exists() if target.agent else None,
        "unit": target.unit,
        "service_manager": target.service_manager,
    }


def keep_wheelhouse(target: service.Target) -> bool:
    """A hub keeps a copy of its wheelhouse: `hivemind-hub installer` packs it."""
    kept = target.prefix / "wheelhouse"
    if kept.resolve() == target.wheelhouse.resolve():
        return False
    wanted = {p.name: p for p in target.wheelhouse.iterdir() if p.is_file()}
    present = {p.name: p for p in kept.iterdir()} if kept.is_dir() else {}
    if wanted.keys() == present.keys() and all(
        present[n].read_bytes() == p.read_bytes() for n, p in wanted.items()
    ):
        return False
    partial = kept.with_name("wheelhouse.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(target.wheelhouse, partial)
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(partial, kept)
    return True


def next_step(target: service.Target) -> str:
    if target.agent:
        return f"next: join with a token from the hub: {target.script('hivemind-agent')} join ..."
    return (
        f"next: hivemind-hub init --state-dir {target.state_dir} --endpoint HOST:7443, then "
        f"systemctl start {target.unit} (the unit waits for init)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=os.environ.get("HIVEMIND_INSTALLER", "machine_install.py"),
        description="Install HiveMind on this machine, offline, from the wheels it carries.",
    )
    parser.add_argument(
        "token", nargs="?", help="a join token, '-' to read it from stdin (default: the one inside)"
    )
    parser.add_argument("--role", choices=service.ROLES, help="what this machine is")
    parser.add_argument("--wheelhouse", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="/opt/hivemind", help="(default /opt/hivemind)")
    parser.add_argument("--bin-dir", default="/usr/local/bin", help="(default /usr/local/bin)")
    parser.add_argument("--systemd-dir", default="/etc/systemd/system")
    parser.add_argument("--state-dir", help="(default /var/lib/hivemind-agent or -hub)")
    parser.add_argument("--unit", help="the systemd unit's name (default hivemind-agent/-hub)")
    parser.add_argument("--name", help="the node's name on the hub (default: hostname)")
    parser.add_argument("--interface", help="the WireGuard interface (default hm0)")
    parser.add_argument(
        "--endpoint", help="a hub: HOST[:PORT] agents dial; runs `hivemind-hub init` once"
    )
    parser.add_argument(
        "--service-manager",
        choices=["auto", "systemd", "direct", "none"],
        default="auto",
        help="systemd, or start the agent directly where systemd is not running (auto)",
    )
    parser.add_argument("--uninstall", action="store_true", help="remove what this installed")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        bundle: dict[str, Any] = {}
        if args.bundle:
            bundle = json.loads((Path(args.bundle) / "installer.json").read_text())
            args.wheelhouse = args.wheelhouse or str(Path(args.bundle) / "wheels")
        if args.uninstall:
            recorded = service.installed_record(Path(args.prefix))
            for key in ("role", "unit", "bin_dir", "systemd_dir", "state_dir"):
                if recorded.get(key):
                    setattr(args, key, recorded[key])
        elif not args.wheelhouse:
            raise service.InstallError("--wheelhouse DIR is needed")
        target = service.Target(args, bundle)
        summary = service.uninstall(target) if args.uninstall else install(target)
        if not args.uninstall and not target.enrolled_marker.exists():
            service.say(next_step(target))
    except (service.InstallError, OSError) as error:
        print(f"error: {service.printable(str(error))}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, AttributeError) as error:  # a damaged installer.json, say
        print(f"error: unexpected content ({service.printable(repr(error))})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run this again to finish", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary["changed"]:
        print("\n".join(summary["changed"]))
    elif args.uninstall:
        print(f"nothing to remove: HiveMind is not installed in {summary['prefix']}")
    else:
        print(f"nothing changed: HiveMind is installed in {summary['prefix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
