#!/usr/bin/env bash
# Installs the Debian packages the tests and the benchmark use (nginx, haproxy,
# prometheus with promtool, podman with runc and debootstrap for the image,
# chromium for the browser tests,
# nodejs and npm for the Node.js client tests), only when they are missing.
# Needs root (or sudo) on Debian/Ubuntu.
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# headless Chromium drives the demo page over the DevTools protocol (tests/integration/test_demo_browser.py)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Node.js and npm run the `ws` client of tests/node (tests/integration/test_compression_clients.py)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# podman builds and runs the image where no Docker engine runs (scripts/build-image.sh)
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
echo "installing Debian packages: ${missing[*]}"
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
