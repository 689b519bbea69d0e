//! Entry points for fuzzing every decoder that reads bytes from a peer or from disk. The same
//! functions back the cargo-fuzz targets in `fuzz/` and a seeded smoke test in the suite. Each
//! must return normally on any input: a malformed input is dropped, never a panic.

use bftcd_proto::bftcd::{Block, Genesis, PeerMessage};
use bftcd_proto::Message;

use crate::consensus::certs::sim::SimCrypto;
use crate::consensus::{CommittedLog, Config, Core, Domain, Input, SafetyRules, SafetyState};

struct NoLog;

impl CommittedLog for NoLog {
    fn read(&self, _: u64) -> Option<bftcd_proto::bftcd::CommittedBlock> {
        None
    }
}

fn core() -> Core {
    let cfg = Config::new(0, Domain { chain_id: "fuzz".into(), epoch: 1, n: 4 }, [7; 32]);
    Core::new(cfg, Box::new(SimCrypto { me: 0, n: 4 }), SafetyRules::new(SafetyState::default()), 1, None, vec![], vec![])
}

/// A peer message: decoded, then handled by a consensus core as if from each peer. The core has
/// a read-index round open, and a read-index reply is aimed at it, so replies reach the checks.
pub fn peer_message(data: &[u8]) {
    if let Ok(mut msg) = PeerMessage::decode(data) {
        let mut c = core();
        let _ = c.handle(1_000, Input::ReadIndex, &NoLog);
        if let Some(bftcd_proto::bftcd::peer_message::Kind::ReadIndexReply(r)) = msg.kind.as_mut() {
            r.round = c.read_round();
        }
        for from in [1usize, 2, 3, 9] {
            let _ = c.handle(1_000, Input::Message { from, msg: msg.clone() }, &NoLog);
        }
        let _ = c.handle(60_000, Input::Tick, &NoLog);
    }
}

/// A length-prefixed frame from the peer transport.
pub fn frame(data: &[u8]) {
    let _ = crate::net::decode_frame(data, 1 << 20);
}

/// A ledger file (magic added, so the record parser is exercised).
pub fn ledger_file(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("bftcd-fuzz-ledger-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("ledger.log");
    let mut bytes = crate::ledger::MAGIC.to_vec();
    bytes.extend_from_slice(data);
    if std::fs::write(&path, &bytes).is_ok() {
        let _ = crate::LedgerFile::scan(&path, |_, _| Ok(()));
    }
}

/// The consensus log file (blocks voted for and the safety state).
pub fn consensus_log(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("bftcd-fuzz-consensus-log-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut bytes = b"BFTCDCL1".to_vec();
    bytes.extend_from_slice(data);
    if std::fs::write(dir.join("consensus.log"), &bytes).is_ok() {
        let _ = crate::consensus_log::ConsensusLog::open(&dir, 0);
    }
}

/// Genesis and block decoding plus the hashes and checks run on them.
pub fn genesis_and_block(data: &[u8]) {
    if let Ok(g) = Genesis::decode(data) {
        let _ = crate::keys::check_genesis(&g);
        let _ = crate::genesis_hash(&g);
    }
    if let Ok(b) = Block::decode(data) {
        let _ = crate::block_hash(&b);
    }
}
