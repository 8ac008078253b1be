#!/usr/bin/env bash
# Build the local task images (there is no registry): only the missing ones, so it is idempotent.
#   hivemind/busybox:latest  the Debian busybox-static binary with its applet symlinks and /tmp
#   hivemind/python:3.11     a debootstrap minbase rootfs of bookworm with python3-minimal
# Environment: DEBIAN_MIRROR overrides the mirror (default: the one apt already uses);
# FORCE=1 rebuilds images that exist.
set -euo pipefail

BUSYBOX_IMAGE=hivemind/busybox:latest
PYTHON_IMAGE=hivemind/python:3.11
SUITE=bookworm
PATH_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

have_image() { [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }

# The first Debian mirror apt is configured with for $SUITE (deb822 or one-line format).
debian_mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$file" ]] || continue
    awk -v suite="$SUITE" '
      /^[[:space:]]*$/ { if (uri != "" && found) { print uri; exit } uri = ""; found = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found = 1 }
      END { if (uri != "" && found) print uri }
    ' "$file"
  done | head -n 1 | grep . && return
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk -v suite="$SUITE" '$1 == "deb" && $0 !~ /\[/ && $3 == suite { print $2; exit }
                             $1 == "deb" && $0 ~ /\[/ && $4 == suite { print $3; exit }' \
    | grep . && return
  echo http://deb.debian.org/debian
}

build_busybox() {
  local busybox rootfs
  busybox=$(command -v busybox) || die "busybox is not installed (apt-get install busybox-static)"
  [[ "$(ldd "$busybox" 2>&1 || true)" == *"not a dynamic executable"* ]] \
    || die "$busybox is not statically linked (apt-get install busybox-static)"
  say "building $BUSYBOX_IMAGE from $busybox"
  rootfs="$SCRATCH/busybox"
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,tmp,work,out,etc}
  chmod 1777 "$rootfs/tmp"
  cp "$busybox" "$rootfs/bin/busybox"
  chroot "$rootfs" /bin/busybox --install -s
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  tar -C "$rootfs" -c . | docker import --change "$PATH_ENV" --change 'CMD ["/bin/sh"]' \
    - "$BUSYBOX_IMAGE" >/dev/null
  say "built $BUSYBOX_IMAGE"
}

build_python() {
  local mirror rootfs
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  mirror=$(debian_mirror)
  say "building $PYTHON_IMAGE: debootstrap $SUITE (minbase + python3-minimal) from $mirror"
  rootfs="$SCRATCH/python"
  if ! debootstrap --variant=minbase --include=python3-minimal "$SUITE" "$rootfs" "$mirror" \
    >"$SCRATCH/debootstrap.log" 2>&1; then
    tail -n 20 "$SCRATCH/debootstrap.log" >&2
    cp "$SCRATCH/debootstrap.log" /tmp/hivemind-debootstrap.log
    die "debootstrap failed (full log: /tmp/hivemind-debootstrap.log)"
  fi
  ln -sf python3 "$rootfs/usr/bin/python"
  mkdir -p "$rootfs/work" "$rootfs/out"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  say "importing $PYTHON_IMAGE"
  tar -C "$rootfs" -c . | docker import --change "$PATH_ENV" --change 'CMD ["python3"]' \
    - "$PYTHON_IMAGE" >/dev/null
  say "built $PYTHON_IMAGE"
}

[[ $EUID -eq 0 ]] || die "run as root (chroot, debootstrap)"
docker info >/dev/null 2>&1 || die "docker is not running (make setup starts dockerd)"

SCRATCH=$(mktemp -d /tmp/hivemind-images.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT

if have_image "$BUSYBOX_IMAGE"; then say "$BUSYBOX_IMAGE is present"; else build_busybox; fi
if have_image "$PYTHON_IMAGE"; then say "$PYTHON_IMAGE is present"; else build_python; fi
