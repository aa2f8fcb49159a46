#!/usr/bin/env bash
# Builds the ws-gateway image with podman on a machine without a container registry or Docker
# engine (the recipe of shared/CONTAINERS.md):
#   1. a local Debian bookworm base image with python3 (debootstrap), cached as a tarball;
#   2. wheels built on the host (the image build runs with --network none), the gateway's compiled
#      with mypyc (setup.py);
#   3. podman build of the project's Dockerfile against that base.
# Usage: scripts/build-image.sh [IMAGE_TAG] [EXAMPLE_APP_TAG]
#   IMAGE_TAG: the gateway image (default localhost/ws-gateway:dev)
#   EXAMPLE_APP_TAG: also build the example FastAPI app image (Dockerfile target example-app)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-localhost/ws-gateway:dev}
example_tag=${2:-}
base=localhost/ws-gateway-base:bookworm
cache_dir=${WS_GATEWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ws-gateway}
python=${PYTHON:-$root/.venv/bin/python}
export CONTAINERS_CONF="$root/containers/containers.conf"

for tool in podman debootstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-image: $tool is missing: run scripts/install-system-deps.sh" >&2; exit 1; }
done

if ! podman image exists "$base"; then
  mkdir -p "$cache_dir"
  if [ -f "$cache_dir/base-bookworm.tar" ]; then
    podman load -q -i "$cache_dir/base-bookworm.tar" >/dev/null
  else
    # The Debian mirror this machine's apt already uses (never written into the repo).
    mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
             | grep -v security | head -n1 | awk '{print $2}' || true)
    [ -n "$mirror" ] || { echo "build-image: no Debian mirror found in the apt sources" >&2; exit 1; }
    rootfs=$(mktemp -d)
    trap 'umount "$rootfs/proc" 2>/dev/null || true; rm -rf "$rootfs"' EXIT
    echo "build-image: creating the base image from $mirror (about a minute, once)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    mount -t proc proc "$rootfs/proc"
    chroot "$rootfs" apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null 2>&1
    chroot "$rootfs" apt-get clean
    umount "$rootfs/proc"
    tar -C "$rootfs" -c . | podman import -q - "$base" >/dev/null
    podman save -q -o "$cache_dir/base-bookworm.tar" "$base"
  fi
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/config" "$context/examples"
cp "$root/Dockerfile" "$root/.dockerignore" "$context/"
cp "$root/config/gateway.yaml" "$context/config/"
cp "$root/examples/app.py" "$root/examples/demo_api.py" "$root/examples/demo.html" "$root/examples/__init__.py" \
  "$context/examples/"
extra=()
[ -n "$example_tag" ] && extra=(fastapi uvicorn websockets)
# The gateway's wheel is built compiled (setup.py: mypyc, WS_GATEWAY_COMPILE=1); the image has no compiler.
WS_GATEWAY_COMPILE=1 "$python" -m pip wheel -q --disable-pip-version-check -w "$context/wheels" "$root" "${extra[@]}" 2>&1 \
  | grep -v '^WARNING: Location' || true
ls "$context/wheels"/ws_gateway-*.whl >/dev/null
podman build -q --pull=never --network none --build-arg "BASE_IMAGE=$base" --target runtime -t "$tag" "$context" >/dev/null
echo "built $tag"
if [ -n "$example_tag" ]; then
  podman build -q --pull=never --network none --build-arg "BASE_IMAGE=$base" --target example-app \
    -t "$example_tag" "$context" >/dev/null
  echo "built $example_tag"
fi
# Each build leaves its untagged build-stage images behind; drop dangling images so repeated
# builds (CI on the same machine) do not fill the disk.
podman image prune -f >/dev/null
