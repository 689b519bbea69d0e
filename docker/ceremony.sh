#!/bin/sh
# The genesis ceremony of the compose stack, run once by its `ceremony` service before any
# sidecar starts: every bank's keys, the chain's genesis and every bank's signature over it,
# written into the banks' volumes.
#
# Here one container plays all four banks. In a real deployment each bank runs keygen, genesis
# and genesis sign on its own host and hands over only its public validator.pb and its signature
# (docs/deployment.md, "The genesis ceremony"): no party ever holds another bank's keys.
#
# Layout: /ceremony/dealer (the ceremony's own volume: the descriptors' genesis and signatures),
# /ceremony/bank<i> (bank i's sidecar volume: keys/, genesis.pb and genesis.sigs/; the sidecar's
# data/ comes later). Idempotent: keys are never remade, the genesis is made once and only copied
# afterwards.
set -eu

banks="bank1 bank2 bank3 bank4"
chain_id=${BFTCD_CHAIN_ID:-bftcd-compose}
dealer=/ceremony/dealer

for b in $banks; do
  if [ ! -f "/ceremony/$b/keys/validator.pb" ]; then
    # Self-signed peer certificate, pinned in the genesis. Other banks dial this bank's sidecar
    # by its service name on `peers`.
    bftcd keygen --name "$b" --dir "/ceremony/$b/keys" \
      --peer-address "$b:2380" --client-address "$b:2379"
  fi
done

if [ ! -f "$dealer/genesis.pb" ]; then
  # The genesis time is fixed once, here; every bank rebuilding the genesis from the same
  # descriptors and this time gets the same bytes.
  time=${BFTCD_GENESIS_TIME:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
  bftcd genesis --chain-id "$chain_id" --genesis-time "$time" --out "$dealer/genesis.pb.new" \
    /ceremony/bank1/keys/validator.pb /ceremony/bank2/keys/validator.pb \
    /ceremony/bank3/keys/validator.pb /ceremony/bank4/keys/validator.pb
  mkdir -p "$dealer/genesis.sigs"
  for b in $banks; do
    bftcd genesis sign --genesis "$dealer/genesis.pb.new" --keys "/ceremony/$b/keys" \
      --out "$dealer/genesis.sigs/$b.sig"
  done
  mv "$dealer/genesis.pb.new" "$dealer/genesis.pb"
fi

# Every bank keeps its own copy of the genesis and of every signature, as on separate hosts
# (`serve` reads <genesis>.sigs).
for b in $banks; do
  if [ ! -f "/ceremony/$b/genesis.pb" ]; then
    mkdir -p "/ceremony/$b/genesis.sigs"
    cp "$dealer"/genesis.sigs/*.sig "/ceremony/$b/genesis.sigs/"
    cp "$dealer/genesis.pb" "/ceremony/$b/genesis.pb.new"
    mv "/ceremony/$b/genesis.pb.new" "/ceremony/$b/genesis.pb"
  fi
done
bftcd genesis show "$dealer/genesis.pb"
echo "ceremony: keys, genesis and signatures in place for $banks"
