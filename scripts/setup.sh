#!/usr/bin/env bash
# Idempotent machine setup for HiveMind development, the demo and the tests (Debian 12, root).
#   1. Debian packages (only the missing ones)   2. the Python package with its test extras
#   in .venv   3. dockerd running (started in the background if it is not)   4. the local task
#   images (agent/images.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  wireguard-go wireguard-tools iproute2 iputils-ping nftables iptables procps
  redis-server docker.io busybox-static debootstrap python3-venv ca-certificates
  openssh-server openssh-client chromium chromium-driver python3-apt docker-registry
  e2fsprogs mount prometheus
)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's prometheus starts a system instance listening on every address (port 9090);
  # the tests run their own in a lab namespace. One this setup just installed is stopped.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null \
    && systemctl is-enabled prometheus >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
# The packaged redis-server may have started a system instance on 127.0.0.1:6379, and
# docker-registry one on port 5000; HiveMind runs its own instances and does not use them.

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  say "installing the hivemind-cluster package with its test extras"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[hub,agent,test]'
  touch "$stamp"
fi

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  flags=()
  command -v iptables >/dev/null || flags+=(--iptables=false)
  nohup dockerd "${flags[@]}" >/var/log/hivemind-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/hivemind-dockerd.log"; exit 1; }
fi
bash agent/images.sh
say "setup done"
