//! Entry points for fuzzing every decoder that reads bytes from a peer or from disk. The same
//! functions back the cargo-fuzz targets in `fuzz/` and a seeded smoke test in the suite. Each
//! must return normally on any input: a malformed input is dropped, never a panic.

use bftcd_proto::bftcd::{Block, Genesis, PeerMessage};
use bftcd_proto::Message;

use crate::consensus::certs::sim::SimCrypto;
use crate::consensus::{CommittedLog, Config, Core, Crypto, Domain, Input, SafetyRules, SafetyState};

struct NoLog;

impl CommittedLog for NoLog {
    fn read(&self, _: u64) -> Option<bftcd_proto::bftcd::CommittedBlock> {
        None
    }
}

fn core() -> Core {
    let cfg = Config::new(0, domain(), [7; 32]);
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

/// A peer message with every signature in it made valid (with the simulator's keys, which the
/// fuzzing core uses), so that numbers a peer chooses reach the code behind the checks.
pub fn peer_message_signed(data: &[u8]) {
    if let Ok(mut msg) = PeerMessage::decode(data) {
        resign(&mut msg, &domain());
        peer_message(&msg.encode_to_vec());
    }
}

fn domain() -> Domain {
    Domain { chain_id: "fuzz".into(), epoch: 1, n: 4 }
}

/// Signs every vote, timeout, certificate and operation in `msg` again with the simulator's keys
/// of the validators it names (a quorum's for certificates), leaving everything else as it is.
pub fn resign(msg: &mut PeerMessage, domain: &Domain) {
    use bftcd_proto::bftcd::peer_message::Kind;
    let key = |signer: u32| SimCrypto { me: signer as usize, n: domain.n };
    match msg.kind.as_mut() {
        Some(Kind::Vote(v)) => v.signature = key(v.signer).sign(&domain.vote_bytes(v.view, &v.block_hash, v.justify_view)),
        Some(Kind::Timeout(t)) => {
            let qc_view = t.high_qc.as_ref().map_or(0, |qc| qc.view);
            t.signature = key(t.signer).sign(&domain.timeout_bytes(t.view, qc_view));
            t.high_qc.iter_mut().for_each(|qc| resign_qc(qc, domain));
            t.high_tc.iter_mut().for_each(|tc| resign_tc(tc, domain));
        }
        Some(Kind::Proposal(p)) => {
            p.block.iter_mut().for_each(|b| resign_block(b, domain));
            p.tc.iter_mut().for_each(|tc| resign_tc(tc, domain));
            // Last: it covers the block's hash, which the re-signed certificates do not change.
            let proposer = p.block.as_ref().map_or(0, |b| b.proposer as usize);
            crate::consensus::sign_proposal(&SimCrypto { me: proposer, n: domain.n }, domain, p);
        }
        Some(Kind::Submit(s)) => s.operations.iter_mut().for_each(|op| resign_operation(op, domain)),
        Some(Kind::SyncResponse(r)) => {
            for cb in &mut r.committed {
                cb.block.iter_mut().chain(cb.commit_child.iter_mut()).for_each(|b| resign_block(b, domain));
                cb.commit_qc.iter_mut().for_each(|qc| resign_qc(qc, domain));
            }
            r.uncommitted.iter_mut().for_each(|b| resign_block(b, domain));
        }
        Some(Kind::ReadIndexReply(r)) => {
            r.high_qc.iter_mut().for_each(|qc| resign_qc(qc, domain));
            r.header.iter_mut().for_each(|b| resign_block(b, domain));
        }
        _ => {}
    }
}

fn resign_block(b: &mut Block, domain: &Domain) {
    b.justify.iter_mut().for_each(|qc| resign_qc(qc, domain));
    b.operations.iter_mut().for_each(|op| resign_operation(op, domain));
}

fn resign_operation(op: &mut bftcd_proto::bftcd::Operation, domain: &Domain) {
    let bank = op.id.as_ref().map_or(0, |id| id.bank as usize);
    domain.sign_batch(std::slice::from_mut(op), |bytes| SimCrypto { me: bank, n: domain.n }.sign_operation(bytes));
}

fn resign_qc(qc: &mut bftcd_proto::bftcd::QuorumCert, domain: &Domain) {
    if qc.view == 0 {
        return;
    }
    let signers: Vec<usize> = (0..domain.quorum()).collect();
    let bytes = domain.vote_bytes(qc.view, &qc.block_hash, qc.justify_view);
    let sigs: Vec<Vec<u8>> = signers.iter().map(|&s| SimCrypto { me: s, n: domain.n }.sign(&bytes)).collect();
    let refs: Vec<&[u8]> = sigs.iter().map(|s| s.as_slice()).collect();
    qc.aggregate_signature = SimCrypto { me: 0, n: domain.n }.aggregate(&refs).unwrap_or_default();
    qc.signers = domain.bitmap(signers);
}

fn resign_tc(tc: &mut bftcd_proto::bftcd::TimeoutCert, domain: &Domain) {
    for v in &mut tc.votes {
        v.signature = SimCrypto { me: v.signer as usize, n: domain.n }.sign(&domain.timeout_bytes(tc.view, v.high_qc_view));
    }
    tc.high_qc.iter_mut().for_each(|qc| resign_qc(qc, domain));
}

/// One field of an encoded protobuf message: its key (number and wire type) and its value.
#[derive(Clone)]
enum Field {
    Varint(u64, u64),
    Fixed64(u64, [u8; 8]),
    Bytes(u64, Vec<u8>),
    Fixed32(u64, [u8; 4]),
}

fn read_varint(data: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let (&b, rest) = data.split_first()?;
        *data = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn parse_fields(mut data: &[u8]) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let key = read_varint(&mut data)?;
        let field = match key & 7 {
            0 => Field::Varint(key, read_varint(&mut data)?),
            1 => {
                let (v, rest) = data.split_first_chunk::<8>()?;
                data = rest;
                Field::Fixed64(key, *v)
            }
            2 => {
                let len = usize::try_from(read_varint(&mut data)?).ok().filter(|l| *l <= data.len())?;
                let (v, rest) = data.split_at(len);
                data = rest;
                Field::Bytes(key, v.to_vec())
            }
            5 => {
                let (v, rest) = data.split_first_chunk::<4>()?;
                data = rest;
                Field::Fixed32(key, *v)
            }
            _ => return None,
        };
        fields.push(field);
    }
    Some(fields)
}

fn encode_fields(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match f {
            Field::Varint(k, v) => {
                write_varint(&mut out, *k);
                write_varint(&mut out, *v);
            }
            Field::Fixed64(k, v) => {
                write_varint(&mut out, *k);
                out.extend_from_slice(v);
            }
            Field::Bytes(k, v) => {
                write_varint(&mut out, *k);
                write_varint(&mut out, v.len() as u64);
                out.extend_from_slice(v);
            }
            Field::Fixed32(k, v) => {
                write_varint(&mut out, *k);
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// Variants of an encoded protobuf message, each with one numeric field set to `value`, at any
/// depth: every varint present, and every field number up to 12 added as a varint in each
/// nested message (proto3 leaves zeros out, and a number that is not a varint field of that
/// message makes a variant that does not decode, which is fine).
pub fn numeric_variants(data: &[u8], value: u64) -> Vec<Vec<u8>> {
    let Some(fields) = parse_fields(data) else { return Vec::new() };
    let mut out = Vec::new();
    for number in 1..=12u64 {
        let mut bytes = data.to_vec();
        write_varint(&mut bytes, number << 3);
        write_varint(&mut bytes, value);
        out.push(bytes);
    }
    for i in 0..fields.len() {
        let replaced: Vec<Field> = match &fields[i] {
            Field::Varint(k, _) => vec![Field::Varint(*k, value)],
            Field::Bytes(k, inner) => numeric_variants(inner, value).into_iter().map(|v| Field::Bytes(*k, v)).collect(),
            _ => Vec::new(),
        };
        for field in replaced {
            let mut copy = fields.clone();
            copy[i] = field;
            out.push(encode_fields(&copy));
        }
    }
    out
}
