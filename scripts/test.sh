#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the deterministic tests of the sequencer, and the
# integration tests that start real stock etcd processes and real sidecars on loopback.
# Installs stock etcd first (scripts/setup.sh). Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "test: building"
cargo build --workspace --bins --quiet
# The Byzantine-bank tests run a test-only build (never shipped) from its own target dir.
cargo build -p bftcd-proxy --features byzantine --target-dir target/byzantine --quiet
profile=default
if [ "${CI:-}" = "true" ]; then profile=ci; fi
cargo nextest run --workspace --profile "$profile" "$@"
# The etcdctl compatibility suite once more with every sidecar serving client TLS (etcdctl with
# a client certificate), as kube-apiserver connects in production.
if [ "$#" -eq 0 ]; then
    echo "test: the etcdctl compatibility suite over client TLS"
    BFTCD_COMPAT_CLIENT_TLS=1 cargo nextest run --workspace --profile "$profile" -E 'binary(etcdctl_compat)'
fi
