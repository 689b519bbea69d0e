//! The genesis ceremony's signatures. Every bank signs the genesis hash with its Ed25519
//! operation key; a multi-bank chain starts only with a valid signature of every bank over
//! exactly its genesis, so no bank (and no one who hands out files) can start others on a
//! genesis they did not all agree to.

use std::collections::BTreeMap;

use bftcd_proto::bftcd::{Genesis, GenesisSignature, GenesisSignatures};
use ed25519_dalek::Signer;

use crate::block::genesis_hash;
use crate::keys::BankKeys;

/// Domain of a genesis signature: distinct from the genesis hash's own tag and from every
/// other signed message, so the signature cannot be replayed as anything else.
pub const DOMAIN: &[u8] = b"bftcd.genesis-signature.v1\0";

/// The signature files at `path`: the file itself, or every visible file of the directory in
/// name order (each bank's `.sig` file dropped into one directory).
pub fn signature_files(path: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && !f.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

/// The bytes a bank signs: the domain and the genesis hash.
pub fn message(hash: &[u8; 32]) -> Vec<u8> {
    [DOMAIN, &hash[..]].concat()
}

/// This bank's signature over `genesis`, as a signatures file with one entry. The bank is the
/// validator whose operation key these keys hold.
pub fn sign(keys: &BankKeys, genesis: &Genesis) -> Result<GenesisSignatures, String> {
    let mine = keys.operation.verifying_key().to_bytes();
    let bank = genesis
        .validators
        .iter()
        .position(|v| v.operation_key == mine)
        .ok_or("these keys are not any bank's in this genesis (its operation key is not listed)")?;
    let hash = genesis_hash(genesis);
    let signature = keys.operation.sign(&message(&hash)).to_bytes().to_vec();
    Ok(GenesisSignatures {
        genesis_hash: hash.to_vec(),
        signatures: vec![GenesisSignature {
            bank: bank as u32,
            signature,
        }],
    })
}

/// Merges signature files over one genesis, one signature per bank (the first given wins; a bad
/// one is reported by [`check`]). Files over another genesis are returned apart, unmerged.
pub fn merge(
    files: Vec<GenesisSignatures>,
    hash: &[u8; 32],
) -> (GenesisSignatures, Vec<GenesisSignatures>) {
    let mut by_bank = BTreeMap::new();
    let mut other = Vec::new();
    for f in files {
        if f.genesis_hash != hash[..] {
            other.push(f);
            continue;
        }
        for s in f.signatures {
            by_bank.entry(s.bank).or_insert(s);
        }
    }
    (
        GenesisSignatures {
            genesis_hash: hash.to_vec(),
            signatures: by_bank.into_values().collect(),
        },
        other,
    )
}

fn name(genesis: &Genesis, bank: usize) -> String {
    match genesis.validators.get(bank) {
        Some(v) if !v.name.is_empty() => v.name.clone(),
        _ => format!("#{}", bank + 1),
    }
}

/// Checks that `sigs` holds a valid signature of every bank of `genesis` over its hash; the
/// error names the banks whose signature is missing or bad.
pub fn check(genesis: &Genesis, sigs: &GenesisSignatures) -> Result<(), String> {
    let hash = genesis_hash(genesis);
    if sigs.genesis_hash != hash[..] {
        return Err(format!(
            "the signatures are over genesis {}, not over this genesis {}",
            hex::encode(&sigs.genesis_hash),
            hex::encode(hash)
        ));
    }
    let msg = message(&hash);
    let n = genesis.validators.len();
    let mut signed = vec![false; n];
    for s in &sigs.signatures {
        let bank = s.bank as usize;
        if bank >= n {
            return Err(format!(
                "a signature names bank #{}, but the genesis has {n} banks",
                bank + 1
            ));
        }
        let key = <[u8; 32]>::try_from(genesis.validators[bank].operation_key.as_slice())
            .ok()
            .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok());
        let sig = <[u8; 64]>::try_from(s.signature.as_slice())
            .ok()
            .map(|b| ed25519_dalek::Signature::from_bytes(&b));
        match (key, sig) {
            (Some(key), Some(sig)) if key.verify_strict(&msg, &sig).is_ok() => signed[bank] = true,
            _ => {
                return Err(format!(
                    "the signature of bank {} over genesis {} does not verify",
                    name(genesis, bank),
                    hex::encode(hash)
                ))
            }
        }
    }
    let missing: Vec<String> = (0..n)
        .filter(|&b| !signed[b])
        .map(|b| name(genesis, b))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no signature of bank {} over genesis {}: every bank must sign it (bftcd genesis sign)",
            missing.join(", "),
            hex::encode(hash)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    #[test]
    fn every_bank_must_sign_exactly_this_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let validators = (0..4)
            .map(|i| {
                keys::generate(
                    &dir.path().join(format!("b{i}")),
                    &format!("bank{}", i + 1),
                    "127.0.0.1:1",
                    "127.0.0.1:2",
                )
                .unwrap()
            })
            .collect();
        let genesis = Genesis {
            chain_id: "c".into(),
            epoch: 1,
            validators,
            genesis_time_ms: 5,
            ..Default::default()
        };
        let bank_keys: Vec<BankKeys> = (0..4)
            .map(|i| BankKeys::load(&dir.path().join(format!("b{i}"))).unwrap())
            .collect();
        let files: Vec<GenesisSignatures> = bank_keys
            .iter()
            .map(|k| sign(k, &genesis).unwrap())
            .collect();
        assert_eq!(files[2].signatures[0].bank, 2);
        let hash = genesis_hash(&genesis);
        let (all, other) = merge(files.clone(), &hash);
        assert!(other.is_empty());
        check(&genesis, &all).unwrap();
        // One missing: named.
        let (three, _) = merge(files[..3].to_vec(), &hash);
        let e = check(&genesis, &three).unwrap_err();
        assert!(e.contains("no signature of bank bank4"), "{e}");
        // A bad one: named, even with every bank present.
        let mut bad = all.clone();
        bad.signatures[1].signature[0] ^= 1;
        assert!(check(&genesis, &bad)
            .unwrap_err()
            .contains("bank bank2 over genesis"));
        // Another bank's signature under one's index.
        let mut swapped = all.clone();
        swapped.signatures[0].signature = all.signatures[3].signature.clone();
        assert!(check(&genesis, &swapped).is_err());
        // Signatures over another genesis count for nothing.
        let mut changed = genesis.clone();
        changed.max_txn_ops = 64;
        assert!(check(&changed, &all)
            .unwrap_err()
            .contains("not over this genesis"));
        let changed_files: Vec<GenesisSignatures> = vec![sign(&bank_keys[0], &changed).unwrap()];
        let (merged, other) = merge(
            changed_files
                .into_iter()
                .chain(files[1..].iter().cloned())
                .collect(),
            &genesis_hash(&changed),
        );
        assert_eq!(other.len(), 3);
        assert!(check(&changed, &merged)
            .unwrap_err()
            .contains("no signature of bank bank2, bank3, bank4"));
        let mut out_of_range = all.clone();
        out_of_range.signatures[0].bank = 9;
        assert!(check(&genesis, &out_of_range).is_err());
        // Keys of no bank in the genesis cannot sign it.
        let stranger = dir.path().join("stranger");
        keys::generate(&stranger, "stranger", "a", "b").unwrap();
        assert!(sign(&BankKeys::load(&stranger).unwrap(), &genesis).is_err());
    }
}
