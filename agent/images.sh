#!/usr/bin/env bash
# Build the local task images (there is no registry): only those that are missing or were built
# by an older recipe, so it is idempotent.
#   hivemind/busybox:latest  the Debian busybox-static binary with its applet symlinks and /tmp
#   hivemind/python:3.11     a debootstrap minbase rootfs of bookworm with CPython's whole
#                            standard library, pip, requests, numpy, pandas, matplotlib (Agg),
#                            Pillow and scikit-learn (Debian's packages)
# Each image carries the digest of the recipe that built it as its comment ("hivemind recipe
# <digest>"; a label would be copied onto every task container): a change to a build function
# or its package list rebuilds that image on the next run.
# Environment: DEBIAN_MIRROR overrides the mirror (default: the one apt already uses);
# FORCE=1 rebuilds images that are current.
set -euo pipefail

BUSYBOX_IMAGE=hivemind/busybox:latest
PYTHON_IMAGE=hivemind/python:3.11
SUITE=bookworm
RECIPE_COMMENT="hivemind recipe"
PATH_ENV='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
# libopenblas0-pthread: numpy's BLAS and LAPACK (Debian's fallback is the slow reference one).
PYTHON_PACKAGES=(
  python3 python3-pip python3-venv python3-requests python3-numpy python3-pandas
  python3-matplotlib python3-pil python3-sklearn libopenblas0-pthread
)
# Tasks run as uid 65534 on a read-only root: matplotlib draws without a display and keeps its
# font cache on the task's /tmp.
PYTHON_ENV=("$PATH_ENV" LANG=C.UTF-8 MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

# A digest of everything that decides an image's content: the named functions' code and the
# data given after "--".
recipe_of() {
  local functions=()
  while [[ $1 != -- ]]; do functions+=("$1"); shift; done
  shift
  { declare -f "${functions[@]}"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16
}

# The recipe an image was built from, empty when the image is missing or has none.
recipe_built() {
  local comment
  comment=$(docker image inspect -f '{{.Comment}}' "$1" 2>/dev/null) || return 0
  [[ "$comment" != "$RECIPE_COMMENT "* ]] || echo "${comment#"$RECIPE_COMMENT "}"
}

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

# docker import ROOTFS as IMAGE with its recipe, CMD and the ENV entries that follow.
import_rootfs() {
  local rootfs=$1 image=$2 recipe=$3 cmd=$4 env replaced built
  shift 4
  local changes=(--message "$RECIPE_COMMENT $recipe" --change "CMD $cmd")
  for env in "$@"; do changes+=(--change "ENV $env"); done
  say "importing $image"
  replaced=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  built=$(tar -C "$rootfs" -c . | docker import "${changes[@]}" - "$image")
  # The image this one replaces goes, unless a container or another tag still uses it.
  if [[ -n "$replaced" && "$replaced" != "$built" ]]; then
    docker image rm "$replaced" >/dev/null 2>&1 || true
  fi
  say "built $image"
}

build_busybox() {
  local recipe=$1 busybox rootfs
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
  import_rootfs "$rootfs" "$BUSYBOX_IMAGE" "$recipe" '["/bin/sh"]' "$PATH_ENV"
}

# What a task never reads: apt's caches and lists, manual pages, documentation (the copyright
# files stay).
trim_rootfs() {
  local rootfs=$1
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man "$rootfs"/usr/share/info
  find "$rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
}

# Run a build step with its output in the build log; on failure show the log's tail and stop.
logged() {
  local what=$1
  shift
  if ! "$@" >>"$SCRATCH/build.log" 2>&1; then
    tail -n 20 "$SCRATCH/build.log" >&2
    cp "$SCRATCH/build.log" /tmp/hivemind-images.log
    die "$what failed (full log: /tmp/hivemind-images.log)"
  fi
}

# Install an empty package named $2 into ROOTFS $1 so that apt takes that dependency as met:
# Debian's scipy depends on the pythran compiler, which brings gcc, g++, Boost and the Python
# headers (about 450 MB) that nothing uses at run time.
stand_in() {
  local rootfs=$1 package=$2 version
  version=$(chroot "$rootfs" apt-cache show --no-all-versions "$package" \
    | awk '$1 == "Version:" { print $2; exit }')
  [[ -n "$version" ]] || die "no package $package in $SUITE"
  mkdir -p "$SCRATCH/$package/DEBIAN"
  printf '%s\n' "Package: $package" "Version: $version" "Architecture: all" \
    "Maintainer: HiveMind <root@localhost>" \
    "Description: stand-in for $package, not needed at run time" \
    >"$SCRATCH/$package/DEBIAN/control"
  dpkg-deb --build "$SCRATCH/$package" "$rootfs/tmp/$package.deb" >/dev/null
  logged "installing the $package stand-in" chroot "$rootfs" dpkg -i "/tmp/$package.deb"
  rm "$rootfs/tmp/$package.deb"
}

build_python() {
  local recipe=$1 mirror rootfs
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  mirror=$(debian_mirror)
  say "building $PYTHON_IMAGE: debootstrap $SUITE (minbase) from $mirror"
  rootfs="$SCRATCH/python"
  logged debootstrap debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$mirror"
  say "installing ${PYTHON_PACKAGES[*]}"
  logged "apt-get update" chroot "$rootfs" apt-get update
  stand_in "$rootfs" python3-pythran
  logged "apt-get install" chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${PYTHON_PACKAGES[@]}"
  ln -sf python3 "$rootfs/usr/bin/python"
  mkdir -p "$rootfs/work" "$rootfs/out"
  trim_rootfs "$rootfs"
  import_rootfs "$rootfs" "$PYTHON_IMAGE" "$recipe" '["python3"]' "${PYTHON_ENV[@]}"
}

# Build IMAGE with BUILDER unless it exists with the current RECIPE (FORCE=1: always).
build_unless_current() {
  local image=$1 recipe=$2 builder=$3 built
  built=$(recipe_built "$image")
  if [[ "${FORCE:-0}" != 1 && "$built" == "$recipe" ]]; then
    say "$image is up to date"
    return
  fi
  if [[ "${FORCE:-0}" == 1 ]]; then
    say "rebuilding $image (FORCE=1)"
  elif docker image inspect "$image" >/dev/null 2>&1; then
    say "$image was built by another recipe (${built:-none}, now $recipe): rebuilding"
  fi
  "$builder" "$recipe"
}

[[ $EUID -eq 0 ]] || die "run as root (chroot, debootstrap)"
docker info >/dev/null 2>&1 || die "docker is not running (make setup starts dockerd)"

SCRATCH=$(mktemp -d /tmp/hivemind-images.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT

build_unless_current "$BUSYBOX_IMAGE" \
  "$(recipe_of build_busybox import_rootfs -- "$PATH_ENV")" build_busybox
build_unless_current "$PYTHON_IMAGE" \
  "$(recipe_of build_python stand_in trim_rootfs import_rootfs -- \
    "${PYTHON_PACKAGES[@]}" "${PYTHON_ENV[@]}")" \
  build_python
