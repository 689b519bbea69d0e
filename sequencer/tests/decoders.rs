//! Seeded smoke run of the fuzz entry points (`bftcd_sequencer::fuzzing`) on random and mutated
//! inputs, so every CI run exercises the decoders; `fuzz/` runs the same entry points under
//! libFuzzer for as long as one likes.

use bftcd_proto::bftcd::{
    peer_message::Kind, Block, CommittedBlock, Operation, OperationId, PeerMessage, Proposal, QuorumCert, ReadIndexReply,
    ReadIndexRequest, Submit, SyncRequest, SyncResponse, Timeout, TimeoutCert, TimeoutVote, Vote,
};
use bftcd_proto::Message;
use bftcd_sequencer::fuzzing;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Well-formed messages to mutate: mutations of real encodings reach deeper than random bytes.
fn seeds() -> Vec<Vec<u8>> {
    let qc = QuorumCert { epoch: 1, view: 3, block_hash: vec![1; 32], justify_view: 2, signers: vec![7], aggregate_signature: vec![0; 16] };
    let block = Block {
        height: 2,
        epoch: 1,
        view: 4,
        parent_hash: vec![1; 32],
        timestamp_ms: 5_000,
        proposer: 0,
        operations: vec![Operation { id: Some(OperationId { bank: 1, nonce: 9 }), ..Default::default() }],
        justify: Some(qc.clone()),
        ..Default::default()
    };
    let msgs = vec![
        Kind::Proposal(Proposal { block: Some(block.clone()), tc: None, signature: vec![7; 64] }),
        Kind::Vote(Vote { epoch: 1, view: 4, block_hash: vec![2; 32], justify_view: 3, signer: 1, signature: vec![0; 16], proposal_signature: vec![8; 64] }),
        Kind::Timeout(Timeout { epoch: 1, view: 5, high_qc: Some(qc.clone()), signer: 2, signature: vec![0; 16], high_tc: None }),
        Kind::ReadIndexRequest(ReadIndexRequest { round: 77 }),
        Kind::Timeout(Timeout {
            epoch: 1,
            view: 5,
            high_qc: Some(qc.clone()),
            signer: 3,
            signature: vec![0; 16],
            high_tc: Some(TimeoutCert {
                epoch: 1,
                view: 4,
                votes: (1..4).map(|s| TimeoutVote { signer: s, high_qc_view: 3, signature: vec![0; 16] }).collect(),
                high_qc: Some(qc.clone()),
            }),
        }),
        Kind::Submit(Submit {
            operations: vec![Operation { id: Some(OperationId { bank: 1, nonce: 9 }), submitted_ms: 900, ..Default::default() }],
        }),
        Kind::SyncRequest(SyncRequest { committed_height: 1, want_block: vec![1; 32] }),
        Kind::SyncResponse(SyncResponse {
            committed: vec![CommittedBlock { block: Some(block.clone()), commit_qc: Some(qc.clone()), commit_child: Some(block.clone()) }],
            uncommitted: vec![block.clone()],
        }),
        Kind::ReadIndexReply(ReadIndexReply { round: 0, height: 2, high_qc: Some(qc), header: Some(bftcd_sequencer::header(&block)), committed_height: 1 }),
    ];
    let mut out: Vec<Vec<u8>> = msgs.into_iter().map(|k| PeerMessage { kind: Some(k) }.encode_to_vec()).collect();
    out.push(block.encode_to_vec());
    out
}

const EXTREMES: [u64; 4] = [u64::MAX, u64::MAX - 1, u32::MAX as u64, 1 << 63];

/// Every numeric field of every seed (nested ones, and ones proto3 leaves out) at each extreme,
/// as sent and signed again so that the signature checks pass.
#[test]
fn extreme_numbers_in_any_field_are_dropped_not_a_panic() {
    let mut fed = 0;
    for seed in seeds() {
        for extreme in EXTREMES {
            for data in fuzzing::numeric_variants(&seed, extreme) {
                fuzzing::peer_message(&data);
                fuzzing::peer_message_signed(&data);
                fuzzing::genesis_and_block(&data);
                fed += 1;
            }
        }
    }
    assert!(fed > 500, "{fed} variants");
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let mut rng = StdRng::seed_from_u64(0xf022);
    let seeds = seeds();
    let iterations: usize = std::env::var("BFTCD_FUZZ_SMOKE").ok().and_then(|s| s.parse().ok()).unwrap_or(3_000);
    for i in 0..iterations {
        let data: Vec<u8> = if i % 2 == 0 {
            let len = rng.gen_range(0..256);
            (0..len).map(|_| rng.gen()).collect()
        } else {
            let mut d = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(1..6) {
                if d.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..d.len());
                match rng.gen_range(0..3) {
                    0 => d[at] = rng.gen(),
                    1 => {
                        d.remove(at);
                    }
                    _ => d.insert(at, rng.gen()),
                }
            }
            // Now and then a number at one of the ends of its range, in any field.
            if rng.gen_range(0..4) == 0 {
                let extreme = EXTREMES[rng.gen_range(0..EXTREMES.len())];
                let variants = fuzzing::numeric_variants(&d, extreme);
                if !variants.is_empty() {
                    d = variants[rng.gen_range(0..variants.len())].clone();
                }
            }
            d
        };
        fuzzing::peer_message(&data);
        fuzzing::peer_message_signed(&data);
        fuzzing::frame(&data);
        fuzzing::genesis_and_block(&data);
        if i % 10 == 0 {
            fuzzing::ledger_file(&data);
            fuzzing::consensus_log(&data);
        }
    }
}
