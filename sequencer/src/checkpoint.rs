//! State digest checkpoints: after applying a block with operations, each bank signs the digest
//! of its etcd state ([`crate::state_digest`]) and sends it to the others; n − f equal digests
//! for one height make a [`CheckpointCert`], as PBFT checkpoints do.
//!
//! Certification runs beside consensus, not inside it: no vote waits for an apply, so the write
//! path is as fast as without digests, and a chain that goes idle still certifies its last
//! writes (the messages need no block). A chain with nothing new applied sends nothing.
//!
//! A bank whose own digest differs from a certified one learns it here ([`Event::Differs`]) and
//! stops serving (the proxy raises etcd's CORRUPT alarm). A wrong digest from up to f banks is
//! never certified, since n − f signatures need at least one honest bank with that state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bftcd_proto::bftcd::{peer_message::Kind, Checkpoint, CheckpointCert, CheckpointSignature, PeerMessage};
use bftcd_proto::Message;
use tokio::sync::mpsc;

use crate::consensus::{Crypto, Domain};
use crate::net::Network;

/// Heights beyond this bank's committed height that a peer's checkpoint may name: a peer may be
/// ahead, but not by more than it could have committed; beyond, it is dropped.
pub const WINDOW: u64 = 4096;
/// Certified checkpoints kept to compare with own digests computed late (a bank behind on apply).
const KEEP_CERTIFIED: usize = 1024;
/// Own digests kept until their height is certified.
const KEEP_OWN: usize = 4096;
/// How often at most a certificate goes to the checkpoints file: each supersedes the one before,
/// so the file keeps one a second and the last one, not one per block.
const FILE_EVERY: Duration = Duration::from_secs(1);

pub type Digest = [u8; 32];

/// The bytes a bank signs for a checkpoint.
pub fn signed_bytes(domain: &Domain, height: u64, digest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"bftcd/checkpoint/v1\0");
    out.extend_from_slice(domain.chain_id.as_bytes());
    out.push(0);
    out.extend_from_slice(&domain.epoch.to_be_bytes());
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(digest);
    out
}

/// Checks a certificate on its own: n − f distinct banks' valid signatures over its digest.
pub fn verify_cert(crypto: &dyn Crypto, domain: &Domain, cert: &CheckpointCert) -> Result<(), String> {
    if cert.epoch != domain.epoch {
        return Err(format!("epoch {} is not the chain's {}", cert.epoch, domain.epoch));
    }
    if cert.state_digest.len() != 32 {
        return Err(format!("a state digest of {} bytes (32 expected)", cert.state_digest.len()));
    }
    let msg = signed_bytes(domain, cert.height, &cert.state_digest);
    let mut signers = std::collections::BTreeSet::new();
    for s in &cert.signatures {
        if s.signer as usize >= domain.n {
            return Err(format!("signer {} is not a validator", s.signer));
        }
        if !signers.insert(s.signer) {
            return Err(format!("signer {} appears twice", s.signer));
        }
        if !crypto.verify_operation(s.signer as usize, &msg, &s.signature) {
            return Err(format!("bank {}'s signature does not verify", s.signer));
        }
    }
    let needed = if domain.n == 1 { 0 } else { domain.quorum() };
    if signers.len() < needed {
        return Err(format!("{} signatures, {} needed", signers.len(), needed));
    }
    Ok(())
}

/// What the book tells the bank.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// n − f banks signed this digest for this height.
    Certified(CheckpointCert),
    /// A certified digest differs from this bank's own at the same height.
    Differs { height: u64, mine: Digest, certified: CheckpointCert },
}

/// Why a peer's checkpoint was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    NotItsOwn,
    WrongEpoch,
    BadDigest,
    AlreadyCertified,
    TooFarAhead,
    /// A second, different digest from the same bank for the same height.
    Conflicting,
    Duplicate,
}

/// The checkpoints of every bank, without I/O: own digests, peers' signed digests, and what is
/// certified.
pub struct Book {
    n: usize,
    quorum: usize,
    epoch: u64,
    own: BTreeMap<u64, Digest>,
    /// By height, by signer: (digest, signature). Only heights above `top`.
    votes: BTreeMap<u64, BTreeMap<u32, (Digest, Vec<u8>)>>,
    certified: BTreeMap<u64, CheckpointCert>,
    /// The highest certified height.
    top: u64,
}

impl Book {
    pub fn new(domain: &Domain) -> Book {
        Book {
            n: domain.n,
            quorum: if domain.n == 1 { 1 } else { domain.quorum() },
            epoch: domain.epoch,
            own: BTreeMap::new(),
            votes: BTreeMap::new(),
            certified: BTreeMap::new(),
            top: 0,
        }
    }

    pub fn top(&self) -> u64 {
        self.top
    }

    /// Starts from a certificate found on disk.
    pub fn restore(&mut self, cert: CheckpointCert) {
        self.top = self.top.max(cert.height);
        self.certified.insert(cert.height, cert);
    }

    /// This bank's own digest for `height`, with its signature (`me` is this bank's index).
    pub fn own(&mut self, me: u32, height: u64, digest: Digest, signature: Vec<u8>) -> Vec<Event> {
        if let Some(cert) = self.certified.get(&height) {
            // Certified before this bank got there (it was behind on apply).
            return match cert.state_digest.as_slice() == digest {
                true => vec![],
                false => vec![Event::Differs { height, mine: digest, certified: cert.clone() }],
            };
        }
        if height <= self.top {
            return vec![];
        }
        self.own.insert(height, digest);
        while self.own.len() > KEEP_OWN {
            self.own.pop_first();
        }
        self.votes.entry(height).or_default().insert(me, (digest, signature));
        self.tally(height)
    }

    /// The checks a peer's checkpoint must pass before its signature is worth verifying.
    pub fn admissible(&self, from: u32, c: &Checkpoint, committed: u64) -> Result<Digest, Drop> {
        if c.signer != from {
            return Err(Drop::NotItsOwn);
        }
        if c.epoch != self.epoch {
            return Err(Drop::WrongEpoch);
        }
        let digest: Digest = c.state_digest.as_slice().try_into().map_err(|_| Drop::BadDigest)?;
        if c.height <= self.top {
            return Err(Drop::AlreadyCertified);
        }
        if c.height > committed.max(self.top).saturating_add(WINDOW) {
            return Err(Drop::TooFarAhead);
        }
        match self.votes.get(&c.height).and_then(|v| v.get(&from)) {
            Some((d, _)) if *d == digest => Err(Drop::Duplicate),
            Some(_) => Err(Drop::Conflicting),
            None => Ok(digest),
        }
    }

    /// Adds a peer's checkpoint whose signature verified (after [`Book::admissible`]).
    pub fn peer(&mut self, c: Checkpoint, digest: Digest) -> Vec<Event> {
        if c.height <= self.top || c.signer as usize >= self.n {
            return vec![];
        }
        self.votes.entry(c.height).or_default().entry(c.signer).or_insert((digest, c.signature));
        self.tally(c.height)
    }

    fn tally(&mut self, height: u64) -> Vec<Event> {
        let Some(votes) = self.votes.get(&height) else { return vec![] };
        let mut counts: BTreeMap<Digest, usize> = BTreeMap::new();
        for (d, _) in votes.values() {
            *counts.entry(*d).or_default() += 1;
        }
        let Some((digest, _)) = counts.into_iter().find(|(_, c)| *c >= self.quorum) else { return vec![] };
        let signatures = votes
            .iter()
            .filter(|(_, (d, _))| *d == digest)
            .map(|(s, (_, sig))| CheckpointSignature { signer: *s, signature: sig.clone() })
            .collect();
        let cert = CheckpointCert { epoch: self.epoch, height, state_digest: digest.to_vec(), signatures };
        let mut events = vec![Event::Certified(cert.clone())];
        if let Some(mine) = self.own.get(&height) {
            if *mine != digest {
                events.push(Event::Differs { height, mine: *mine, certified: cert.clone() });
            }
        }
        self.top = height;
        self.votes = self.votes.split_off(&(height + 1));
        self.own = self.own.split_off(&(height + 1));
        self.certified.insert(height, cert);
        while self.certified.len() > KEEP_CERTIFIED {
            self.certified.pop_first();
        }
        events
    }
}

/// The file of certificates, `<data-dir>/checkpoints`: each record a varint length and a
/// [`CheckpointCert`].
pub fn file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

/// Reads every whole record of a checkpoints file (a torn last record, as after a crash, ends it).
pub fn read_file(path: &Path) -> std::io::Result<Vec<CheckpointCert>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut buf = bytes.as_slice();
    let mut out = Vec::new();
    while !buf.is_empty() {
        match CheckpointCert::decode_length_delimited(&mut buf) {
            Ok(c) => out.push(c),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// A bank's end of checkpointing: hand it own digests, take its events.
#[derive(Clone)]
pub struct Checkpoints {
    own: mpsc::Sender<(u64, Digest)>,
    events: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<Event>>>>,
}

impl Checkpoints {
    /// This bank's digest after applying `height`. Dropped if checkpointing is far behind
    /// (a later height's digest covers the same state).
    pub fn own(&self, height: u64, digest: Digest) {
        if self.own.try_send((height, digest)).is_err() {
            tracing::debug!(height, "checkpoint: own digest dropped (checkpointing is behind)");
        }
    }

    /// The events, for the one taker (the proxy).
    pub fn events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What the checkpoint task needs of its bank.
pub struct Setup {
    pub domain: Domain,
    pub me: u32,
    pub crypto: Option<Arc<dyn Crypto>>,
    pub network: Option<Network>,
    pub data_dir: PathBuf,
    /// The committed height now (for [`Book::admissible`]).
    pub committed: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Test builds: sign and send a digest other than this bank's own.
    pub wrong_digest: bool,
}

/// Starts the checkpoint task. `peers`: checkpoints from the peer network.
pub fn start(setup: Setup, peers: mpsc::Receiver<(usize, Checkpoint)>) -> std::io::Result<Checkpoints> {
    let path = file_path(&setup.data_dir);
    let mut book = Book::new(&setup.domain);
    if let Some(last) = read_file(&path)?.pop() {
        book.restore(last);
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let (own_tx, own_rx) = mpsc::channel(4096);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(setup, book, file, own_rx, peers, events_tx));
    Ok(Checkpoints { own: own_tx, events: Arc::new(std::sync::Mutex::new(Some(events_rx))) })
}

async fn run(
    setup: Setup,
    mut book: Book,
    mut file: std::fs::File,
    mut own: mpsc::Receiver<(u64, Digest)>,
    mut peers: mpsc::Receiver<(usize, Checkpoint)>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut unwritten: Option<CheckpointCert> = None;
    let mut written = Instant::now() - FILE_EVERY;
    let mut peers_open = true;
    loop {
        let produced = tokio::select! {
            o = own.recv() => match o {
                None => return,
                Some((height, digest)) => {
                    let sent = if setup.wrong_digest { let mut d = digest; d[0] ^= 0xff; d } else { digest };
                    let msg = signed_bytes(&setup.domain, height, &sent);
                    let signature = setup.crypto.as_ref().map(|c| c.sign_operation(&msg)).unwrap_or_default();
                    if let Some(net) = &setup.network {
                        let c = Checkpoint { epoch: setup.domain.epoch, height, state_digest: sent.to_vec(), signer: setup.me, signature: signature.clone() };
                        net.broadcast(PeerMessage { kind: Some(Kind::Checkpoint(c)) }.encode_to_vec().into());
                    }
                    book.own(setup.me, height, digest, signature)
                }
            },
            p = peers.recv(), if peers_open => match p {
                None => { peers_open = false; vec![] }
                Some((from, c)) => on_peer(&setup, &mut book, from, c),
            },
            _ = tokio::time::sleep(FILE_EVERY), if unwritten.is_some() => vec![],
        };
        for e in produced {
            if let Event::Certified(c) = &e {
                unwritten = Some(c.clone());
            }
            if let Event::Differs { height, mine, certified } = &e {
                tracing::error!(height, mine = %hex::encode(mine), certified = %hex::encode(&certified.state_digest),
                    signers = ?certified.signatures.iter().map(|s| s.signer).collect::<Vec<_>>(),
                    "checkpoint: this bank's state digest differs from the one n - f banks certified");
            }
            let _ = events.send(e);
        }
        if written.elapsed() >= FILE_EVERY {
            if let Some(c) = unwritten.take() {
                let write = file.write_all(&c.encode_length_delimited_to_vec()).and_then(|_| file.sync_data());
                if let Err(e) = write {
                    tracing::warn!(error = %e, "checkpoint: cannot append to the checkpoints file");
                }
                written = Instant::now();
            }
        }
    }
}

fn on_peer(setup: &Setup, book: &mut Book, from: usize, c: Checkpoint) -> Vec<Event> {
    let digest = match book.admissible(from as u32, &c, (setup.committed)()) {
        Ok(d) => d,
        Err(Drop::AlreadyCertified | Drop::Duplicate) => return vec![],
        Err(why) => {
            tracing::warn!(peer = from, height = c.height, ?why, "checkpoint: peer's checkpoint dropped");
            return vec![];
        }
    };
    let msg = signed_bytes(&setup.domain, c.height, &digest);
    let valid = setup.crypto.as_ref().is_some_and(|k| k.verify_operation(from, &msg, &c.signature));
    if !valid {
        tracing::warn!(peer = from, height = c.height, "checkpoint: peer's checkpoint has an invalid signature; dropped");
        return vec![];
    }
    book.peer(c, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(n: usize) -> Domain {
        Domain { chain_id: "t".into(), epoch: 1, n }
    }

    fn cp(signer: u32, height: u64, digest: Digest) -> Checkpoint {
        Checkpoint { epoch: 1, height, state_digest: digest.to_vec(), signer, signature: vec![signer as u8] }
    }

    fn add(book: &mut Book, c: Checkpoint) -> Vec<Event> {
        let d = book.admissible(c.signer, &c, 10).expect("admissible");
        book.peer(c, d)
    }

    // Each row: (n, own digest or none, peers' digests by signer) → certified digest, and
    // whether this bank's differs.
    #[test]
    fn a_quorum_of_equal_digests_certifies_and_a_different_own_digest_is_reported() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let rows: &[(usize, Option<Digest>, &[(u32, Digest)], Option<Digest>, bool)] = &[
            (4, Some(a), &[(1, a), (2, a)], Some(a), false),
            (4, Some(a), &[(1, a)], None, false),
            (4, Some(a), &[(1, b), (2, b), (3, b)], Some(b), true),
            (4, None, &[(1, b), (2, b), (3, b)], Some(b), false),
            // One liar among four: the others still certify, the lie is not.
            (4, Some(a), &[(1, b), (2, a), (3, a)], Some(a), false),
            // Two of a, one of b: no quorum for either yet.
            (4, Some(a), &[(1, b), (2, a)], None, false),
            // n = 7, f = 2: five needed.
            (7, Some(a), &[(1, a), (2, a), (3, a)], None, false),
            (7, Some(a), &[(1, a), (2, a), (3, a), (4, a)], Some(a), false),
        ];
        for (i, (n, own, peers, want, differs)) in rows.iter().enumerate() {
            let mut book = Book::new(&domain(*n));
            let mut events = Vec::new();
            if let Some(d) = own {
                events.extend(book.own(0, 5, *d, vec![0]));
            }
            for (s, d) in peers.iter() {
                events.extend(add(&mut book, cp(*s, 5, *d)));
            }
            let certified = events.iter().find_map(|e| match e {
                Event::Certified(c) => Some(c.state_digest.clone()),
                _ => None,
            });
            assert_eq!(certified, want.map(|d| d.to_vec()), "row {i}");
            assert_eq!(events.iter().any(|e| matches!(e, Event::Differs { .. })), *differs, "row {i}");
            if let Some(Event::Certified(c)) = events.first() {
                assert!(c.signatures.len() >= book.quorum, "row {i}");
            }
        }
    }

    #[test]
    fn a_peers_checkpoint_is_dropped_when_it_is_not_its_own_stale_too_far_or_conflicting() {
        let mut book = Book::new(&domain(4));
        let a = [1u8; 32];
        assert_eq!(book.admissible(2, &cp(1, 5, a), 10), Err(Drop::NotItsOwn));
        assert_eq!(book.admissible(1, &Checkpoint { epoch: 2, ..cp(1, 5, a) }, 10), Err(Drop::WrongEpoch));
        assert_eq!(book.admissible(1, &Checkpoint { state_digest: vec![1; 31], ..cp(1, 5, a) }, 10), Err(Drop::BadDigest));
        assert_eq!(book.admissible(1, &cp(1, 10 + WINDOW + 1, a), 10), Err(Drop::TooFarAhead));
        add(&mut book, cp(1, 5, a));
        assert_eq!(book.admissible(1, &cp(1, 5, a), 10), Err(Drop::Duplicate));
        assert_eq!(book.admissible(1, &cp(1, 5, [9; 32]), 10), Err(Drop::Conflicting));
        add(&mut book, cp(2, 5, a));
        add(&mut book, cp(3, 5, a));
        assert_eq!(book.top(), 5);
        assert_eq!(book.admissible(1, &cp(1, 4, a), 10), Err(Drop::AlreadyCertified));
    }

    #[test]
    fn an_own_digest_computed_after_certification_is_still_compared() {
        let mut book = Book::new(&domain(4));
        for s in 1..=3 {
            add(&mut book, cp(s, 7, [3; 32]));
        }
        assert_eq!(book.own(0, 7, [3; 32], vec![]), vec![]);
        let late = book.own(0, 7, [4; 32], vec![]);
        assert!(matches!(late.as_slice(), [Event::Differs { height: 7, .. }]), "{late:?}");
    }

    #[test]
    fn a_single_bank_certifies_its_own_digest() {
        let mut book = Book::new(&domain(1));
        let e = book.own(0, 3, [5; 32], vec![]);
        assert!(matches!(e.as_slice(), [Event::Certified(c)] if c.height == 3));
    }
}
