//! Who this sidecar is to clients. etcd's response headers carry a cluster id and member id;
//! BFTcd reports ids derived from the chain id and bank names, the same on every bank, instead
//! of the ids of the hidden local etcd.

use bftcd_proto::bftcd::Genesis;
use bftcd_proto::etcdserverpb::{Member, ResponseHeader};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    /// Validator index of this bank in the genesis.
    pub bank: u32,
    pub members: Vec<Member>,
    /// Reported as raft_term: the epoch of the validator set.
    pub term: u64,
}

fn id64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap())
}

impl Identity {
    pub fn new(genesis: &Genesis, name: &str) -> anyhow::Result<Self> {
        let bank = genesis
            .validators
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| anyhow::anyhow!("bank {name:?} is not a validator in the genesis of chain {:?}", genesis.chain_id))?;
        let chain = genesis.chain_id.as_bytes();
        let members = genesis
            .validators
            .iter()
            .map(|v| Member {
                id: id64(&[b"bftcd.member", chain, v.name.as_bytes()]),
                name: v.name.clone(),
                peer_ur_ls: if v.peer_address.is_empty() { vec![] } else { vec![format!("https://{}", v.peer_address)] },
                client_ur_ls: if v.client_address.is_empty() { vec![] } else { vec![format!("http://{}", v.client_address)] },
                is_learner: false,
            })
            .collect::<Vec<_>>();
        Ok(Identity {
            cluster_id: id64(&[b"bftcd.cluster", chain]),
            member_id: members[bank].id,
            bank: bank as u32,
            members,
            term: genesis.epoch.max(1),
        })
    }

    /// Client URLs as https: this bank serves TLS (the banks of a chain are expected to agree).
    pub fn serve_https(&mut self) {
        for url in self.members.iter_mut().flat_map(|m| m.client_ur_ls.iter_mut()) {
            if let Some(rest) = url.strip_prefix("http://") {
                *url = format!("https://{rest}");
            }
        }
    }

    /// The header a client sees: the local etcd's revision, the cluster's ids.
    pub fn header(&self, upstream: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = upstream.map(|h| h.revision).unwrap_or_default();
        Some(ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id, revision, raft_term: self.term })
    }
}
