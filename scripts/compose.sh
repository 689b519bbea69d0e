#!/usr/bin/env bash
# Builds BFTcd's container images and runs the four-bank compose stack (docker-compose.yml).
#
#   ./scripts/compose.sh build            build the binaries (release) and the images
#   ./scripts/compose.sh up [ARGS...]     build, then `compose up -d ARGS...`
#   ./scripts/compose.sh down [ARGS...]   `compose down ARGS...` (add -v to delete every volume: keys too)
#   ./scripts/compose.sh compose ARGS...  any other compose command (ps, logs, ...)
#   ./scripts/compose.sh prometheus       build bftcd-prometheus:local from Debian's prometheus
#                                         package, for the `monitoring` profile (Grafana is not
#                                         packaged by Debian: its image must come from elsewhere)
#
# Images are built FROM scratch out of a staged context (no base image is pulled): bftcd and
# stock etcd exactly as on a host, the shared libraries `ldd` lists for them, and Debian's
# busybox-static for the ceremony and health checks. Keys are never put into an image: the
# ceremony service makes them into volumes at the first `up`.
#
# Environment:
#   BFTCD_COMPOSE_PROFILE  release (default) or debug: which cargo build the images take
#   BFTCD_COMPOSE_BIN      take this bftcd binary and skip cargo (the test passes target/debug/bftcd)
#   BFTCD_IMAGE, BFTCD_ETCD_IMAGE  image names (default bftcd:local, bftcd-etcd:3.5.16)
#   COMPOSE_PROJECT_NAME and the port variables of docker-compose.yml pass through to compose.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
profile=${BFTCD_COMPOSE_PROFILE:-release}
bftcd_image=${BFTCD_IMAGE:-bftcd:local}
etcd_image=${BFTCD_ETCD_IMAGE:-bftcd-etcd:3.5.16}
export BFTCD_IMAGE=$bftcd_image BFTCD_ETCD_IMAGE=$etcd_image
# The user every container runs as; owns the data directories inside the images (a new named
# volume takes the owner of the directory it is mounted over).
uid=65532
# Staged build contexts, one per run (two builds at once must not share one); removed on exit.
stage=$root/target/compose-context.$$
trap 'rm -rf "$stage"' EXIT

compose() {
  if command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f "$root/docker-compose.yml" "$@"
  elif docker compose version >/dev/null 2>&1; then
    docker compose -f "$root/docker-compose.yml" "$@"
  else
    echo "compose: neither docker-compose nor the docker compose plugin is installed" >&2
    exit 1
  fi
}

# Debian's statically linked busybox, downloaded once into tools/ (not committed).
busybox() {
  local bb="$root/tools/busybox/bin/busybox"
  if [ ! -x "$bb" ]; then
    echo "compose: downloading busybox-static from Debian" >&2
    local work
    work=$(mktemp -d)
    chmod 777 "$work" # apt drops to user _apt for downloads
    (cd "$work" && apt-get download -qq busybox-static >&2)
    mkdir -p "$root/tools/busybox/pkg" "$root/tools/busybox/bin"
    dpkg -x "$work"/busybox-static_*.deb "$root/tools/busybox/pkg"
    rm -rf "$work"
    cp "$root/tools/busybox/pkg/bin/busybox" "$bb"
  fi
  echo "$bb"
}

# Copies a binary and every shared library ldd lists for it into a root file system.
add_binary() {
  local src=$1 rootfs=$2 dest=$3
  mkdir -p "$rootfs$(dirname "$dest")"
  # Debug symbols only make the build context large.
  strip -o "$rootfs$dest" "$src" 2>/dev/null || cp -L "$src" "$rootfs$dest"
  chmod 755 "$rootfs$dest"
  local lib
  for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
}

# The parts of a root file system every image shares: busybox with the applets the scripts use,
# a user entry, /tmp and the data directories owned by that user.
base_rootfs() {
  local ctx=$1 bb
  bb=$(busybox)
  mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc" "$ctx/owned"
  cp "$bb" "$ctx/rootfs/bin/busybox"
  local applet
  for applet in sh cat cp mv mkdir ls rm chmod wget date echo test; do
    ln -sf busybox "$ctx/rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/:/bin/sh\nbftcd:x:%s:%s:bftcd:/var/lib/bftcd:/bin/sh\n' $uid $uid >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nbftcd:x:%s:\n' $uid >"$ctx/rootfs/etc/group"
  printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
}

dockerfile() {
  local ctx=$1
  shift
  {
    echo "# Staged by scripts/compose.sh; nothing is pulled."
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    echo "COPY --chown=$uid:$uid owned/ /"
    echo "LABEL org.bftcd.image=1"
    echo "USER $uid:$uid"
    for line in "$@"; do echo "$line"; done
  } >"$ctx/Dockerfile"
}

# docker build, quiet unless it fails (the legacy builder's deprecation notice is noise here).
image() {
  local out
  out=$(docker build -q -t "$1" "$2" 2>&1) || { echo "$out" >&2; exit 1; }
}

build() {
  local bin
  if [ -n "${BFTCD_COMPOSE_BIN:-}" ]; then
    bin=$BFTCD_COMPOSE_BIN
  else
    echo "compose: building bftcd ($profile)" >&2
    if [ "$profile" = release ]; then
      cargo build --release -p bftcd-proxy --bin bftcd --quiet
    else
      cargo build -p bftcd-proxy --bin bftcd --quiet
    fi
    bin=$root/target/$profile/bftcd
  fi
  [ -x "$bin" ] || { echo "compose: $bin is not an executable" >&2; exit 1; }
  [ -x "$root/tools/bin/etcd" ] || ./scripts/setup.sh >&2

  mkdir -p "$stage"

  # Stock etcd, as Debian ships it; etcdctl for its health check and for operators.
  local ctx=$stage/etcd
  base_rootfs "$ctx"
  add_binary "$root/tools/bin/etcd" "$ctx/rootfs" /usr/local/bin/etcd
  add_binary "$root/tools/bin/etcdctl" "$ctx/rootfs" /usr/local/bin/etcdctl
  add_binary "$root/tools/bin/etcdutl" "$ctx/rootfs" /usr/local/bin/etcdutl
  mkdir -p "$ctx/owned/var/lib/etcd" "$ctx/owned/tmp"
  dockerfile "$ctx" 'ENTRYPOINT ["/usr/local/bin/etcd"]'
  image "$etcd_image" "$ctx"
  echo "compose: built $etcd_image" >&2

  # The sidecar, with the ceremony script (docker/ceremony.sh) and the ceremony's mount points.
  ctx=$stage/bftcd
  base_rootfs "$ctx"
  add_binary "$bin" "$ctx/rootfs" /usr/local/bin/bftcd
  mkdir -p "$ctx/rootfs/usr/local/share/bftcd"
  cp "$root/docker/ceremony.sh" "$ctx/rootfs/usr/local/share/bftcd/ceremony.sh"
  mkdir -p "$ctx/owned/var/lib/bftcd" "$ctx/owned/tmp" "$ctx/owned/ceremony/dealer"
  local i
  for i in 1 2 3 4; do mkdir -p "$ctx/owned/ceremony/bank$i"; done
  dockerfile "$ctx" 'ENTRYPOINT ["/usr/local/bin/bftcd"]'
  image "$bftcd_image" "$ctx"
  echo "compose: built $bftcd_image" >&2
  # Earlier builds of these images, now untagged: ours only (by label), never in use.
  docker image prune -f --filter label=org.bftcd.image=1 >/dev/null
}

# Prometheus as Debian packages it (the server binary only: its web console's JavaScript
# libraries are left out; the API Grafana queries is complete).
prometheus() {
  local ctx=$stage/prometheus work
  base_rootfs "$ctx"
  work=$(mktemp -d)
  chmod 777 "$work" # apt drops to user _apt for downloads
  echo "compose: downloading prometheus from Debian" >&2
  (cd "$work" && apt-get download -qq prometheus >&2)
  dpkg -x "$work"/prometheus_*.deb "$work/pkg"
  add_binary "$work/pkg/usr/bin/prometheus" "$ctx/rootfs" /usr/local/bin/prometheus
  rm -rf "$work"
  mkdir -p "$ctx/owned/prometheus" "$ctx/owned/tmp"
  dockerfile "$ctx" 'ENTRYPOINT ["/usr/local/bin/prometheus"]'
  image bftcd-prometheus:local "$ctx"
  echo "compose: built bftcd-prometheus:local (BFTCD_PROMETHEUS_IMAGE=bftcd-prometheus:local)" >&2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  build) build ;;
  up)
    build
    compose up -d "$@"
    ;;
  down) compose down "$@" ;;
  compose) compose "$@" ;;
  prometheus) prometheus ;;
  *)
    echo "usage: $0 build | up [ARGS...] | down [ARGS...] | compose ARGS... | prometheus" >&2
    exit 2
    ;;
esac
