#!/bin/sh
# The genesis ceremony of the compose stack, run once by its `ceremony` service before any
# sidecar starts: every bank's keys and the chain's genesis, written into the banks' volumes.
#
# This is the ONE place that runs `bftcd keygen` and `bftcd genesis` for the stack. The commands
# below are today's; when the ceremony changes (keygen without --ca-dir, genesis with a required
# --genesis-time, `bftcd genesis sign` and every bank's signature for `serve`), adapt the lines
# marked CEREMONY and nothing else.
#
# Here one container plays all four banks. In a real deployment each bank runs keygen on its
# own host and hands over only its public validator.pb (docs/deployment.md).
#
# Layout: /ceremony/dealer (the ceremony's own volume: the development CA and the genesis),
# /ceremony/bank<i> (bank i's sidecar volume: keys/ and genesis.pb; the sidecar's data/ comes later).
# Idempotent: keys are never remade, the genesis is made once and only copied afterwards.
set -eu

banks="bank1 bank2 bank3 bank4"
chain_id=${BFTCD_CHAIN_ID:-bftcd-compose}
dealer=/ceremony/dealer

for b in $banks; do
  if [ ! -f "/ceremony/$b/keys/validator.pb" ]; then
    # CEREMONY: keygen. Other banks dial this bank's sidecar by its service name on `peers`.
    bftcd keygen --name "$b" --dir "/ceremony/$b/keys" --ca-dir "$dealer/ca" \
      --peer-address "$b:2380" --client-address "$b:2379"
  fi
done

if [ ! -f "$dealer/genesis.pb" ]; then
  # CEREMONY: genesis (then, once it exists: every bank signs it).
  bftcd genesis --chain-id "$chain_id" --out "$dealer/genesis.pb.new" \
    /ceremony/bank1/keys/validator.pb /ceremony/bank2/keys/validator.pb \
    /ceremony/bank3/keys/validator.pb /ceremony/bank4/keys/validator.pb
  mv "$dealer/genesis.pb.new" "$dealer/genesis.pb"
fi

# Every bank keeps its own copy, as on separate hosts.
for b in $banks; do
  if [ ! -f "/ceremony/$b/genesis.pb" ]; then
    cp "$dealer/genesis.pb" "/ceremony/$b/genesis.pb.new"
    mv "/ceremony/$b/genesis.pb.new" "/ceremony/$b/genesis.pb"
  fi
done
echo "ceremony: keys and genesis in place for $banks"
