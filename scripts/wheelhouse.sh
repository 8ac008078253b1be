#!/usr/bin/env bash
# Build the wheelhouse every install path uses (make install, `hivemind-hub installer`, the
# Ansible roles): the wheels of HiveMind and of all its runtime dependencies (the hub, agent
# and cli extras) for this machine's Python, and a wheelhouse.json naming that Python.
#   scripts/wheelhouse.sh [DIR]      (default build/wheelhouse; needs a package index once)
# Idempotent: the dependencies' wheels already in DIR are reused (pip resolves against them
# first), HiveMind's own wheel is rebuilt from this tree every time.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DIR=${1:-build/wheelhouse}
PYTHON=${PYTHON:-/usr/bin/python3}
BUILDER=${BUILDER:-build/wheel-builder}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found (install python3)" >&2; exit 1; }
if [[ ! -x "$BUILDER/bin/pip" ]]; then
  rm -rf "$BUILDER"
  "$PYTHON" -m venv "$BUILDER" || {
    echo "error: $PYTHON cannot make a virtual environment (apt install python3-venv)" >&2
    exit 1
  }
fi
# Fixed timestamps in the wheel: the same tree gives the same bytes, so installing it again
# changes nothing (machine_install.py keys an environment by the wheels' contents).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
mkdir -p "$DIR"
# Built beside DIR and moved in by renames, the manifest last: a reader of DIR (a playbook, a
# test, `hivemind-hub installer`) never finds HiveMind's wheel missing.
fresh=$(mktemp -d "$DIR.partial.XXXXXX")
trap 'rm -rf "$fresh"' EXIT
say "building the wheelhouse in $DIR (HiveMind and its dependencies for $("$PYTHON" -V))"
"$BUILDER/bin/pip" wheel -q --find-links "$DIR" --wheel-dir "$fresh" "$REPO[hub,agent,cli]"
rm -rf "$REPO"/build/lib "$REPO"/build/bdist.* "$REPO"/*.egg-info
built=$(cd "$fresh" && ls hivemind_cluster-*.whl)
for wheel in "$fresh"/*.whl; do mv -f "$wheel" "$DIR/"; done
for wheel in "$DIR"/hivemind_cluster-*.whl; do
  [[ $(basename "$wheel") == "$built" ]] || rm -f "$wheel"
done
"$PYTHON" - "$DIR" <<'EOF'
import json, platform, sys
from pathlib import Path

directory = Path(sys.argv[1])
(wheel,) = sorted(directory.glob("hivemind_cluster-*.whl"))
manifest = {
    "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    "machine": platform.machine(),
    "hivemind": wheel.name.split("-")[1],
    "wheels": sorted(p.name for p in directory.glob("*.whl")),
}
partial = directory / "wheelhouse.json.partial"
partial.write_text(json.dumps(manifest, indent=2) + "\n")
partial.replace(directory / "wheelhouse.json")
print(f"{len(manifest['wheels'])} wheels for Python {manifest['python']} on {manifest['machine']}", file=sys.stderr)
EOF
