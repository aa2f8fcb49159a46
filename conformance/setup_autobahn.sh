#!/usr/bin/env bash
# Build, once, a Debian bullseye chroot with Autobahn|Testsuite's wstest in it.
#
# Why a chroot: wstest is Python 2.7 only (Twisted 19.10, autobahn 0.10.9) and Debian 12 has no
# Python 2. Bullseye still ships python2.7, so debootstrap gives us one from Debian's own packages.
# The chroot shares the host's network namespace: 127.0.0.1 inside is the host's loopback.
#
# The result is cached outside the repository (default ~/.cache/ws-gateway/autobahn-bullseye,
# override with WS_GATEWAY_AUTOBAHN_ROOT); a second run with the cache present only checks it.
# The rootfs is built under a temporary name and renamed when complete, so an interrupted run
# never leaves a half-built cache that looks ready.
#
# Needs root (debootstrap, chroot). Network: the Debian mirror from this machine's apt sources
# (read at run time, never written here) and PyPI, through the CA bundle the host's pip trusts.
#
# Usage: conformance/setup_autobahn.sh            (prints the rootfs path on its last line)
#   HOST_PYTHON   Python 3 whose pip downloads pip 20.3.4 for Python 2 (default: python3)
set -euo pipefail

ROOTFS=${WS_GATEWAY_AUTOBAHN_ROOT:-$HOME/.cache/ws-gateway/autobahn-bullseye}
WSTEST_VERSION=25.10.1      # autobahntestsuite on PyPI
PIP_PY2_VERSION=20.3.4      # the last pip that runs on Python 2.7
SETUPTOOLS_PY2_VERSION=44.0.0
READY="$ROOTFS/.ws-gateway-wstest-$WSTEST_VERSION"
HOST_PYTHON=${HOST_PYTHON:-python3}
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'setup_autobahn: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Run a command inside a rootfs with a clean environment: the host's PIP_* variables (find-links,
# constraints, local indexes) must not leak into the Python 2 pip.
in_root() {
    local root=$1; shift
    env -i HOME=/root PATH="$CHROOT_PATH" LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1 PIP_DEFAULT_TIMEOUT=180 chroot "$root" "$@"
}

# A rootfs is usable when its stamp is there and wstest starts.
is_ready() {
    [[ -f "$READY" ]] && in_root "$ROOTFS" wstest --help >/dev/null 2>&1
}

# The Debian mirror this machine's apt uses: deb822 sources first, then the one-line format.
# Security and -updates suites live elsewhere; take the URI of a stanza serving a plain suite.
host_mirror() {
    local file uri=""
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        uri=$(awk '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; plain = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris = u[1] }
                    if ($i ~ /^Suites:/) {
                        sub(/^Suites:[ \t]*/, "", $i); n = split($i, s, /[ \t]+/)
                        for (j = 1; j <= n; j++) if (s[j] !~ /-(security|updates|backports)$/ && s[j] !~ /\//) plain = 1
                    }
                }
                if (uris != "" && plain && uris !~ /security/) { print uris; exit }
            }' "$file")
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        uri=$(awk '$1 == "deb" {
                  for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { u = $i; s = $(i + 1); break }
                  if (u !~ /security/ && s !~ /-(security|updates|backports)$/) { print u; exit }
              }' "$file")
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
    return 1
}

# The CA bundle the host's pip trusts ($PIP_CERT, then pip's config, then Debian's bundle).
host_ca_bundle() {
    local cert=${PIP_CERT:-}
    if [[ -z $cert ]]; then
        cert=$("$HOST_PYTHON" -m pip config get global.cert 2>/dev/null || true)
    fi
    [[ -n $cert && -f $cert ]] || cert=/etc/ssl/certs/ca-certificates.crt
    [[ -f $cert ]] || die "no CA bundle found for pip"
    echo "$cert"
}

if is_ready; then
    log "cached: $ROOTFS (wstest $WSTEST_VERSION)"
    echo "$ROOTFS"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap and chroot)"
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get install -y debootstrap >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y debootstrap >/dev/null; }
fi

MIRROR=$(host_mirror) || die "could not read a Debian mirror from /etc/apt/sources.list*"
CA=$(host_ca_bundle)
BUILD="$ROOTFS.build.$$"
mkdir -p "$(dirname "$ROOTFS")"
# debootstrap mounts /proc and /sys in the target while it works: unmount whatever is left under
# the build directory before removing it, and never let rm cross into another file system.
cleanup() {
    local mnt
    for mnt in $(awk -v b="$BUILD" 'index($2, b) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf --one-file-system "$BUILD" "$BUILD.debootstrap.log"
}
trap cleanup EXIT

log "debootstrap bullseye from $MIRROR into $BUILD (about a minute)"
debootstrap --variant=minbase \
    --include=python2.7,python2.7-dev,build-essential,libssl-dev,libffi-dev,ca-certificates \
    bullseye "$BUILD" "$MIRROR" >"$BUILD.debootstrap.log" 2>&1 \
    || { tail -n 30 "$BUILD.debootstrap.log" >&2; die "debootstrap failed (its last lines are above)"; }
rm -f "$BUILD.debootstrap.log"

cp "$CA" "$BUILD/etc/ssl/certs/host-ca.crt"
cp /etc/resolv.conf "$BUILD/etc/resolv.conf"

log "pip $PIP_PY2_VERSION for Python 2.7"
mkdir -p "$BUILD/tmp/pip-py2"
"$HOST_PYTHON" -m pip download -q "pip==$PIP_PY2_VERSION" --no-deps --only-binary=:all: \
    --python-version 2.7 -d "$BUILD/tmp/pip-py2"
WHEEL=/tmp/pip-py2/pip-$PIP_PY2_VERSION-py2.py3-none-any.whl
[[ -f "$BUILD$WHEEL" ]] || die "pip download did not produce $WHEEL"
in_root "$BUILD" python2.7 "$WHEEL/pip" install -q --no-index "$WHEEL"

log "setuptools $SETUPTOOLS_PY2_VERSION, wheel"
in_root "$BUILD" python2.7 -m pip install -q "setuptools==$SETUPTOOLS_PY2_VERSION" wheel

# The sdist's setup.py reads a requirements.txt it does not ship, so it declares no dependencies:
# install the pins from its egg-info (the part before any [extra] section, duplicates dropped),
# then the sdist itself with --no-deps.
log "autobahntestsuite $WSTEST_VERSION and its pinned dependencies (builds Twisted, wsaccel, ujson)"
mkdir -p "$BUILD/tmp/sdist"
in_root "$BUILD" python2.7 -m pip download -q "autobahntestsuite==$WSTEST_VERSION" --no-deps \
    --no-binary=:all: -d /tmp/sdist
SDIST=$(cd "$BUILD/tmp/sdist" && ls autobahntestsuite-"$WSTEST_VERSION".tar.gz 2>/dev/null) \
    || die "no autobahntestsuite sdist downloaded"
tar -xzf "$BUILD/tmp/sdist/$SDIST" -C "$BUILD/tmp/sdist"
REQUIRES=$(find "$BUILD/tmp/sdist" -path '*autobahntestsuite.egg-info/requires.txt' | head -n 1)
[[ -n $REQUIRES ]] || die "the sdist has no autobahntestsuite.egg-info/requires.txt"
awk '/^\[/ { exit } NF && !seen[$0]++' "$REQUIRES" >"$BUILD/tmp/sdist/pins.txt"
[[ -s "$BUILD/tmp/sdist/pins.txt" ]] || die "no pins in $REQUIRES"
in_root "$BUILD" python2.7 -m pip install -q -r /tmp/sdist/pins.txt
in_root "$BUILD" python2.7 -m pip install -q --no-deps "/tmp/sdist/$SDIST"
in_root "$BUILD" wstest --help >/dev/null || die "wstest does not start in the chroot"

# What only the build needed: downloaded .debs (about 110 MB), sdists, pip's cache.
find "$BUILD/var/cache/apt/archives" -name '*.deb' -delete
rm -rf "$BUILD/tmp/pip-py2" "$BUILD/tmp/sdist" "$BUILD/root/.cache"
touch "$BUILD/.ws-gateway-wstest-$WSTEST_VERSION"
rm -rf --one-file-system "$ROOTFS"
mv "$BUILD" "$ROOTFS"
trap - EXIT
log "ready: $ROOTFS"
echo "$ROOTFS"
