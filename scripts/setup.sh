#!/usr/bin/env bash
# Installs what BFTcd's cluster and tests need: stock etcd, etcdctl and etcdutl 3.5.16 from
# Debian trixie into the project-local folder `tools/` (Go binaries that need only libc, so the
# system's libc is never touched), and Debian's protoc for the etcd-client crate the tests use
# (BFTcd's own crates use a vendored protoc).
#
# Idempotent: a second run with the binaries in place does nothing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/tools"
want_version="${BFTCD_ETCD_VERSION:-3.5.16}"

# The version text is captured before matching: `etcd --version | grep -q` under pipefail fails
# whenever grep exits first and etcd's later lines hit a closed pipe (SIGPIPE).
have_etcd() {
  [ -x "$tools/bin/etcd" ] && [ -x "$tools/bin/etcdctl" ] && [ -x "$tools/bin/etcdutl" ] || return 1
  local text
  text=$("$tools/bin/etcd" --version 2>/dev/null) || return 1
  case "$text" in
    *"etcd Version: $want_version"*) return 0 ;;
    *) return 1 ;;
  esac
}

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi

# The etcd-client crate (an independent client the tests use) runs protoc in its build script.
if ! command -v protoc >/dev/null 2>&1; then
  echo "setup: installing protoc (protobuf-compiler)"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq protobuf-compiler >/dev/null
fi

# The JSON gateway tests speak to etcd and the banks with curl, as etcd's docs do.
if ! command -v curl >/dev/null 2>&1; then
  echo "setup: installing curl"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq curl >/dev/null
fi

if have_etcd; then
  echo "setup: stock etcd $want_version already in $tools/bin"
  exit 0
fi

# Make trixie's package lists visible to apt without letting it upgrade anything: priority 1
# means a trixie package is only taken when asked for by name (`pkg/trixie`).
src=/etc/apt/sources.list.d/bftcd-trixie.sources
if [ ! -f "$src" ]; then
  echo "setup: adding Debian trixie package lists (pinned low, nothing upgrades from it)"
  $sudo_cmd tee "$src" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $sudo_cmd tee /etc/apt/preferences.d/bftcd-trixie >/dev/null <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 1
PIN
fi
echo "setup: apt-get update"
$sudo_cmd apt-get update -qq

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "setup: downloading etcd-server and etcd-client from trixie"
chmod 777 "$work"  # apt drops to user _apt for downloads
(cd "$work" && apt-get download -qq etcd-server/trixie etcd-client/trixie)
mkdir -p "$tools/etcd" "$tools/bin"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$tools/etcd"
done
for bin in etcd etcdctl etcdutl; do
  found="$tools/etcd/usr/bin/$bin"
  if [ ! -x "$found" ]; then
    echo "setup: $bin not found in the downloaded packages" >&2
    exit 1
  fi
  ln -sf "$found" "$tools/bin/$bin"
done
if ! have_etcd; then
  echo "setup: installed etcd is not version $want_version:" >&2
  "$tools/bin/etcd" --version >&2 || true
  exit 1
fi
version_text=$("$tools/bin/etcd" --version)
echo "${version_text%%$'\n'*}"
echo "setup: stock etcd installed in $tools/bin"
