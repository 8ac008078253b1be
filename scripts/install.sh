#!/usr/bin/env bash
# `make install` / `make uninstall`: HiveMind on this machine from this clone, for real use.
#   make install [ROLE=hub|worker|operator] [PREFIX=/opt/hivemind] [ENDPOINT=host:7443] [TOKEN=hm1_…]
# ENDPOINT (a hub) runs `hivemind-hub init` once and starts the unit; TOKEN (an agent) joins.
# Builds the wheelhouse (scripts/wheelhouse.sh: a package index is needed once), then
# installs from it offline with hub/machine_install.py, the program the agents' installers
# carry: Debian packages, a virtual environment in $PREFIX, the console scripts in
# /usr/local/bin, the systemd unit (enabled; it waits for `hivemind-hub init` or the join).
# A hub also keeps the wheelhouse in $PREFIX/wheelhouse for `hivemind-hub installer`.
# Idempotent. More options of machine_install.py may follow (--bin-dir, --systemd-dir, …).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
ROLE=${ROLE:-hub}
PREFIX=${PREFIX:-/opt/hivemind}

[[ $(id -u) == 0 ]] || { echo "error: run this as root (sudo make install)" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON is missing (apt install python3)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: HiveMind needs Python 3.11 or later; $PYTHON is $("$PYTHON" -V 2>&1)" >&2
  exit 1
}
if [[ ${1:-} == --uninstall ]]; then
  shift
  exec "$PYTHON" hub/machine_install.py --uninstall --role "$ROLE" --prefix "$PREFIX" "$@"
fi
if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  command -v apt-get >/dev/null || {
    echo "error: $PYTHON cannot make virtual environments and there is no apt-get:" \
      "install its venv module (Debian: python3-venv), then run this again" >&2
    exit 1
  }
  echo "==> installing python3-venv" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi
bash scripts/wheelhouse.sh build/wheelhouse
token=()
[[ -n ${TOKEN:-} ]] && token=("$TOKEN")
[[ -n ${ENDPOINT:-} ]] && set -- --endpoint "$ENDPOINT" "$@"
exec "$PYTHON" hub/machine_install.py --wheelhouse build/wheelhouse --role "$ROLE" \
  --prefix "$PREFIX" "$@" "${token[@]}"
