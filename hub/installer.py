"""``hivemind-hub installer``: one self-contained file that installs an agent, offline.

The file is a shell script with a tar archive after its last line: the wheels of HiveMind
and of the agent's dependencies (the part of the hub's wheelhouse an agent needs, resolved
by pip without an index), hub/machine_install.py with hub/machine_service.py (standard
library only: they run with the new machine's ``python3``), and ``installer.json`` (the
role, the hub, and optionally a fresh single-use join token). ``sh FILE`` unpacks it into
a temporary directory and runs the install; docs/install.md describes both ends.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hivemind_cluster.core.audit import HUB_ADMIN, LOCAL, AuditLog, Event
from hivemind_cluster.core.console import printable
from hivemind_cluster.core.errors import InvalidInput, NotFound, SystemFailure
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.machine_service import offline_pip_environment
from hivemind_cluster.mesh import store, tokens
from hivemind_cluster.mesh.ca import CertificateAuthority

PROGRAMS = ("machine_install.py", "machine_service.py")
WHEELHOUSE_ENV = "HIVEMIND_WHEELHOUSE"
HEADER = """\
#!/bin/sh
# HiveMind installer: a {role} agent (HiveMind {version}, Python {python}, {machine}),
# made by hub {hub} on {made}.{token_note}
# On the new machine, as root:   sh {name}            (sh {name} --help: the options)
# Offline: the wheels it installs are in the archive after this script.
set -eu
archive_line={archive_line}
for tool in python3 tar tail; do
  command -v "$tool" >/dev/null 2>&1 || {{
    echo "error: $tool is missing: install it (python3: also python3-venv), then run this again" >&2
    exit 1
  }}
done
python3 -E -c 'import sys; sys.exit(sys.version_info[:2] != ({major}, {minor}))' || {{
  echo "error: these wheels are for Python {python} and this machine's python3 is" \
    "$(python3 -E -c 'import sys; print("%d.%d" % sys.version_info[:2])'):" \
    "make the installer on a hub with that Python" >&2
  exit 1
}}
unpacked=$(mktemp -d "${{TMPDIR:-/tmp}}/hivemind-installer.XXXXXX")
trap 'rm -rf "$unpacked"' EXIT
trap 'exit 130' INT TERM
tail -n +"$archive_line" "$0" | tar -xf - -C "$unpacked" || {{
  echo "error: $0 is damaged (its archive does not unpack): copy it from the hub again" >&2
  exit 1
}}
status=0
HIVEMIND_INSTALLER="sh $0" python3 -E "$unpacked/machine_install.py" --bundle "$unpacked" "$@" \\
  || status=$?
exit "$status"
"""
TOKEN_NOTE = """
# It holds a single-use join token (valid until {expires}): keep it private, use it once."""


@dataclass(frozen=True)
class Installer:
    path: Path
    role: str
    version: str
    wheels: int
    size: int
    token_id: str | None
    expires: float | None


def utc_minute(moment: float | None = None) -> str:
    """``2026-12-02 17:59 UTC``: when the installer was made, until when its token holds."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def find_wheelhouse(given: str | None) -> Path:
    """``--wheelhouse``, ``$HIVEMIND_WHEELHOUSE``, the one ``make install`` keeps beside the
    hub's environment (``<prefix>/wheelhouse``), or a clone's ``build/wheelhouse``."""
    if given:
        candidates = [Path(given)]
    else:
        here = Path(sys.prefix).resolve()
        candidates = [Path(os.environ[WHEELHOUSE_ENV])] if os.environ.get(WHEELHOUSE_ENV) else []
        candidates += [here.parent.parent / "wheelhouse", here.parent / "build" / "wheelhouse"]
    for candidate in candidates:
        if (candidate / "wheelhouse.json").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise NotFound(
        f"no wheelhouse (looked in {looked}): `make install` keeps one, `make wheelhouse` "
        "builds one in a clone; or pass --wheelhouse DIR"
    )


def issue_token(
    settings: HubSettings, role: str, ttl: str, uses: int = 1, labels: dict[str, str] | None = None
) -> tokens.JoinToken:
    """A new join token, recorded in the audit log (``token create`` and the installer)."""
    labels = labels or {}
    client = store.connect_hub(settings)
    token = tokens.create_token(
        client,
        [settings.endpoint],
        CertificateAuthority.load(settings.path).pin,
        role=role,
        ttl_seconds=tokens.parse_duration(ttl),
        uses=uses,
        labels=labels,
    )
    detail = f"{role}, {uses} uses, ttl {ttl}" + "".join(
        f", {key}={value}" for key, value in labels.items()
    )
    AuditLog(client).record(
        Event(HUB_ADMIN, LOCAL, "token.create", f"token:{token.token_id}", detail=detail)
    )
    return token


def agent_wheels(wheelhouse: Path, into: Path) -> list[Path]:
    """The wheels ``hivemind-cluster[agent]`` needs, resolved by pip from the wheelhouse alone."""
    manifest = read_manifest(wheelhouse)
    requirement = f"hivemind-cluster[agent]=={manifest['hivemind']}"
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-index", "--only-binary=:all:"]
    result = subprocess.run(
        [*pip, "--find-links", str(wheelhouse), "--dest", str(into), requirement],
        capture_output=True,
        text=True,
        env=offline_pip_environment(),
        check=False,
    )
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise SystemFailure(f"the wheelhouse {wheelhouse} lacks what an agent needs: {last}")
    wheels = sorted(into.glob("*.whl"))
    (into / "wheelhouse.json").write_text(
        json.dumps({**manifest, "wheels": [w.name for w in wheels]}, indent=2) + "\n"
    )
    return wheels


def read_manifest(wheelhouse: Path) -> dict[str, str]:
    try:
        manifest = json.loads((wheelhouse / "wheelhouse.json").read_text())
        return {key: str(manifest[key]) for key in ("python", "machine", "hivemind")}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidInput(f"{wheelhouse} is not a HiveMind wheelhouse ({error!r})") from None


def archive(wheel_dir: Path, bundle: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for program in PROGRAMS:
            add_bytes(tar, program, resources.files(__package__).joinpath(program).read_bytes())
        add_bytes(tar, "installer.json", json.dumps(bundle, indent=2).encode())
        for path in sorted(wheel_dir.iterdir()):
            tar.add(path, arcname=f"wheels/{path.name}", filter=plain)
    return buffer.getvalue()


def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(plain(info), io.BytesIO(data))


def write_installer(
    settings: HubSettings,
    output: Path,
    role: str,
    wheelhouse: Path,
    token_ttl: str | None,
    labels: dict[str, str] | None = None,
) -> Installer:
    """Write the installer to ``output`` (0700 with a token inside, else 0755)."""
    if role not in tokens.ROLES:
        raise InvalidInput(f"role must be one of {', '.join(tokens.ROLES)}")
    if output.is_dir():
        raise InvalidInput(f"{output} is a directory: name the file to write")
    if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
        raise InvalidInput(f"{output.parent} is not a directory this can write to")
    manifest = read_manifest(wheelhouse)
    hub_name = settings.name or socket.gethostname()
    with tempfile.TemporaryDirectory(prefix="hivemind-installer-") as scratch:
        wheels = agent_wheels(wheelhouse, Path(scratch))
        token = issue_token(settings, role, token_ttl, 1, labels) if token_ttl else None
        made = utc_minute()
        bundle = {"role": role, "hub": hub_name, "made": made}
        expires = time.time() + tokens.parse_duration(token_ttl) if token_ttl else None
        if token is not None:
            bundle |= {"token": token.encode(), "expires": str(expires)}
        payload = archive(Path(scratch), bundle)
    note = TOKEN_NOTE.format(expires=utc_minute(expires))
    fields = {
        "role": role,
        "version": manifest["hivemind"],
        "python": manifest["python"],
        "machine": manifest["machine"],
        "hub": printable(hub_name, newlines=False),
        "made": made,
        "major": manifest["python"].split(".")[0],
        "minor": manifest["python"].split(".")[1],
        "token_note": note if token else "",
        "name": printable(shlex.quote(output.name), newlines=False),
    }
    lines = HEADER.format(archive_line=0, **fields).count("\n")
    header = HEADER.format(archive_line=lines + 1, **fields).encode()
    # Written under a name of its own, created 0600 (the token inside), and renamed whole.
    descriptor, partial = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(header + payload)
        os.chmod(partial, 0o700 if token else 0o755)
        os.replace(partial, output)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return Installer(
        path=output,
        role=role,
        version=str(manifest["hivemind"]),
        wheels=len(wheels),
        size=output.stat().st_size,
        token_id=token.token_id if token else None,
        expires=expires,
    )
