#!/usr/bin/env bash
# Brings up a local BFTcd cluster on loopback: installs stock etcd if needed, builds bftcd, and
# runs `bftcd dev-cluster` in the foreground until Ctrl-C.
#   BANKS (default 4)  DIR (default .bftcd-dev)  BASE_PORT (default 2378: bank 1 on 127.0.0.1:2379)
# Extra arguments go to `bftcd dev-cluster`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "dev-cluster: building bftcd (release)"
cargo build --release --quiet -p bftcd-proxy -p bftcd-verifier
exec ./target/release/bftcd dev-cluster \
  --banks "${BANKS:-4}" --dir "${DIR:-.bftcd-dev}" --base-port "${BASE_PORT:-2378}" "$@"
