#!/usr/bin/env bash
# Build the images an operator deploys, locally and with no registry (none is reachable):
#   ticketledger:${TAG}             ticketd + ticketctl, FROM scratch, non-root, health check
#   ticketledger-prometheus:${TAG}  Debian's prometheus (+ node exporter), FROM scratch
# Each image holds its binaries, exactly the shared libraries `ldd` lists for them, the
# loader, an /etc/passwd with a non-root user, and busybox (static) so the bootstrap and join
# scripts have a shell.
#
# The binaries are the build profile's (dev profile, dependencies at opt-level 2) from
# $CARGO_TARGET_DIR/debug: the script runs `cargo build -p node -p client --bins` first (a
# no-op when they are fresh; NO_CARGO_BUILD=1 skips it; TICKETLEDGER_BIN_DIR takes the two
# binaries from another directory). It never builds --release: that
# profile recompiles RocksDB (30 minutes here) for no operational gain in this project.
#
# Usage: cluster/image/build.sh [--node-only|--prometheus-only]   (TAG=dev by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
TAG=${TAG:-dev}
what=${1:-all}
case "$what" in all|--node-only|--prometheus-only) ;; *) echo "usage: $0 [--node-only|--prometheus-only]" >&2; exit 2;; esac

command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (is dockerd running?)" >&2; exit 1; }

# Copy each binary's shared libraries (as `ldd` resolves them, symlinks followed) and the
# loader into the rootfs at the same paths.
copy_libs() {
    local rootfs=$1; shift
    local lib exe
    for exe in "$@"; do
        ldd "$exe" | awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    done
}

# A rootfs skeleton: passwd/group with the non-root user, /tmp, nsswitch, busybox applets.
skeleton() {
    local rootfs=$1 user=$2 uid=$3
    mkdir -p "$rootfs"/{etc,tmp,bin}
    chmod 1777 "$rootfs/tmp"
    printf 'root:x:0:0:root:/:/sbin/nologin\n%s:x:%s:%s:%s:/nonexistent:/sbin/nologin\n' "$user" "$uid" "$uid" "$user" >"$rootfs/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$rootfs/etc/group"
    printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
    local busybox
    busybox=$(command -v busybox) || { echo "busybox is missing: apt-get install busybox-static" >&2; exit 1; }
    file -L "$busybox" | grep -q 'statically linked' || { echo "$busybox is not static: apt-get install busybox-static" >&2; exit 1; }
    cp -L "$busybox" "$rootfs/bin/busybox"
    for applet in sh sleep grep sed tr cat echo printf test date mkdir ls wc head tail cut; do
        ln -sf busybox "$rootfs/bin/$applet"
    done
}

ensure_apt() {
    local missing=()
    command -v busybox >/dev/null && file -L "$(command -v busybox)" | grep -q 'statically linked' || missing+=(busybox-static)
    if [ "$what" != --node-only ]; then
        command -v prometheus >/dev/null || missing+=(prometheus)
        command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} with apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
            apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
        }
    fi
}

build_node() {
    source "$root/scripts/env.sh"
    local bin="${TICKETLEDGER_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
    if [ "${NO_CARGO_BUILD:-0}" != 1 ]; then
        echo "==> cargo build -p node -p client --bins (dev profile; seconds when fresh)"
        (cd "$root" && cargo build -q -p node -p client --bins)
    fi
    for b in ticketd ticketctl; do
        [ -x "$bin/$b" ] || { echo "$bin/$b is missing: cargo build -p node -p client --bins" >&2; exit 1; }
    done
    local ctx; ctx=$(mktemp -d); trap 'rm -rf "$ctx"' RETURN
    local rootfs="$ctx/rootfs"
    skeleton "$rootfs" ticketledger 10001
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/local/share/ticketledger" "$rootfs/var/lib/ticketledger"
    # Debug info is most of a dev binary's size; symbols stay for backtraces.
    for b in ticketd ticketctl; do
        objcopy --strip-debug "$bin/$b" "$rootfs/usr/local/bin/$b"
    done
    copy_libs "$rootfs" "$rootfs/usr/local/bin/ticketd" "$rootfs/usr/local/bin/ticketctl"
    # The build host's CA bundle (Debian's ca-certificates), so an https:// peer with a public
    # certificate (a payment provider) verifies; without it the clients still speak plain HTTP
    # and take a private CA from --ca-cert.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        mkdir -p "$rootfs/etc/ssl/certs"
        cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    fi
    cp "$here/bootstrap.sh" "$here/k8s-join.sh" "$here/k8s-node.sh" "$rootfs/usr/local/share/ticketledger/"
    cp "$here/Dockerfile" "$ctx/Dockerfile"
    # The data directory is COPY'd --chown to the non-root user (a named volume copies
    # that ownership when first mounted); everything else belongs to root.
    rmdir "$rootfs/var/lib/ticketledger"; mkdir "$ctx/data"
    tar -C "$ctx" --owner=0 --group=0 -cf - Dockerfile rootfs data | docker_build "ticketledger:$TAG"
    echo "==> ticketledger:$TAG $(docker image inspect -f '{{.Size}}' "ticketledger:$TAG" | awk '{ printf "%.0f MB", $1/1e6 }') (ticketd $("$bin/ticketd" --version 2>/dev/null | awk '{print $2}'))"
}

build_prometheus() {
    local ctx; ctx=$(mktemp -d); trap 'rm -rf "$ctx"' RETURN
    local rootfs="$ctx/rootfs"
    skeleton "$rootfs" prometheus 10002
    mkdir -p "$rootfs/usr/bin" "$rootfs/etc/prometheus" "$ctx/data"
    cp -L "$(command -v prometheus)" "$(command -v prometheus-node-exporter)" "$(command -v promtool)" "$rootfs/usr/bin/"
    copy_libs "$rootfs" "$rootfs/usr/bin/prometheus" "$rootfs/usr/bin/prometheus-node-exporter" "$rootfs/usr/bin/promtool"
    cp "$here/../prometheus/prometheus.yml" "$here/../prometheus/alerts.yml" "$rootfs/etc/prometheus/"
    cp "$here/../prometheus/Dockerfile" "$ctx/Dockerfile"
    tar -C "$ctx" --owner=0 --group=0 -cf - Dockerfile rootfs data | docker_build "ticketledger-prometheus:$TAG"
    echo "==> ticketledger-prometheus:$TAG $(docker image inspect -f '{{.Size}}' "ticketledger-prometheus:$TAG" | awk '{ printf "%.0f MB", $1/1e6 }') ($(prometheus --version 2>&1 | head -1))"
}

# docker_build IMAGE: build from the context tar on stdin; drop the image the tag pointed to
# before, unless a container still uses it (rebuilds would otherwise pile up dangling images).
docker_build() {
    local old; old=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)
    docker build -q -t "$1" - >/dev/null
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$1")" ]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

ensure_apt
[ "$what" = --prometheus-only ] || build_node
[ "$what" = --node-only ] || build_prometheus
