#!/usr/bin/env bash
# Builds the CPU test image (default localhost/posttrain-harness:cpu) without any registry image:
#   1. a Debian 12 base image from a debootstrap rootfs (`import`), kept for later builds;
#   2. a wheelhouse: this checkout's wheel, the CPU torch wheel and every dependency (the only step
#      that reads the package registries);
#   3. `build --network none` of containers/Containerfile.cpu over that wheelhouse.
# ENGINE=docker works as well as the default podman. Needs root for debootstrap.
set -euo pipefail
image=${1:-localhost/posttrain-harness:cpu}
engine=${ENGINE:-podman}
base=localhost/posttrain-harness-base:bookworm
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$engine" image inspect "$base" >/dev/null 2>&1; then
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" || { tail -20 "$work/debootstrap.log"; exit 1; }
  tar -C "$work/rootfs" -c . | "$engine" import - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi
mkdir -p "$work/context"
python3 -m pip wheel --quiet --wheel-dir "$work/context/wheelhouse" torch==2.13.0 "$repo"
digest=$(cd "$work/context/wheelhouse" && sha256sum -- * | sha256sum | cut -c1-16)
"$engine" build --network none --build-arg "BASE=$base" --build-arg "WHEELHOUSE_DIGEST=$digest" --tag "$image" --file "$repo/containers/Containerfile.cpu" "$work/context"
echo "built $image"
