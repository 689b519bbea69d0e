//! Signed answers: what a bank vouches for when it answers a client, and how anyone holding the
//! genesis checks it (docs/auditing.md, "Signed answers").
//!
//! A bank signs batches of answers: one Ed25519 signature over the Merkle root of the statements
//! of every answer ready at once, each answer carrying its path ([`crate::merkle`]), so that the
//! cost stays one signature per batch under load and an answer still checks alone.
//!
//! Stream messages (Watch, LeaseKeepAlive) carry their signature inside the message, appended as
//! field [`STREAM_FIELD`], and their statements chain ([`verify_stream`]).

use bftcd_proto::bftcd::{AnswerRecord, AnswerSignature, AnswerStatement, AnswerStream};
use bftcd_proto::Message;
use sha2::{Digest, Sha256};

use crate::consensus::Crypto;
use crate::merkle::{self, Hash};

pub fn leaf(statement: &AnswerStatement) -> Hash {
    let mut h = Sha256::new();
    h.update(b"bftcd/answer/v1\0");
    h.update(statement.encode_to_vec());
    h.finalize().into()
}

/// The bytes a bank signs for a batch.
pub fn batch_bytes(chain_id: &str, epoch: u64, bank: u32, size: u32, root: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"bftcd/answer-batch/v1\0");
    out.extend_from_slice(chain_id.as_bytes());
    out.push(0);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&bank.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(root);
    out
}

/// Signs statements as one batch; returns each one's signature record, in order.
pub fn sign_batch(crypto: &dyn Crypto, statements: Vec<AnswerStatement>) -> Vec<AnswerSignature> {
    let Some(first) = statements.first() else { return vec![] };
    let (chain_id, epoch, bank) = (first.chain_id.clone(), first.epoch, first.bank);
    let leaves: Vec<Hash> = statements.iter().map(leaf).collect();
    let (root, paths) = merkle::tree(&leaves);
    let size = statements.len() as u32;
    let signature = crypto.sign_operation(&batch_bytes(&chain_id, epoch, bank, size, &root));
    statements
        .into_iter()
        .zip(paths)
        .enumerate()
        .map(|(i, (statement, path))| AnswerSignature {
            statement: Some(statement),
            batch_size: size,
            batch_index: i as u32,
            batch_path: path.into_iter().map(|h| h.to_vec()).collect(),
            signature: signature.clone(),
        })
        .collect()
}

/// The revision in an etcd response's header (field 1, `ResponseHeader`, whose field 3 is the
/// revision), read without decoding the rest of the message.
pub fn header_revision(response: &[u8]) -> Option<i64> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct HeaderOnly {
        #[prost(message, optional, tag = "1")]
        header: Option<bftcd_proto::etcdserverpb::ResponseHeader>,
    }
    HeaderOnly::decode(response).ok()?.header.map(|h| h.revision)
}

/// Checks a signed answer against the genesis's keys and against the request and response it
/// came with. Returns the statement.
pub fn verify(crypto: &dyn Crypto, chain_id: &str, epoch: u64, method: &str, record: &AnswerRecord) -> Result<AnswerStatement, String> {
    let sig = record.signature.as_ref().ok_or("no signature")?;
    let st = check_signature(crypto, chain_id, epoch, method, sig)?;
    if st.request_digest != Sha256::digest(&record.request).as_slice() {
        return Err("the signature is for another request".into());
    }
    check_response(&st, &record.response)?;
    Ok(st)
}

/// The statement's response digest and revision against the response bytes.
fn check_response(st: &AnswerStatement, response: &[u8]) -> Result<(), String> {
    if st.response_digest != Sha256::digest(response).as_slice() {
        return Err("the signature is for another response".into());
    }
    // A message without a header is signed with revision 0.
    if header_revision(response).unwrap_or_default() != st.revision {
        return Err(format!("the signed revision {} is not the response's", st.revision));
    }
    Ok(())
}

/// The signature itself: chain, epoch, method, the batch path and the bank's key.
fn check_signature(crypto: &dyn Crypto, chain_id: &str, epoch: u64, method: &str, sig: &AnswerSignature) -> Result<AnswerStatement, String> {
    let st = sig.statement.clone().ok_or("no statement in the signature")?;
    if st.chain_id != chain_id || st.epoch != epoch {
        return Err(format!("signed for chain {:?} epoch {}, not {chain_id:?} epoch {epoch}", st.chain_id, st.epoch));
    }
    if !method.is_empty() && st.method != method {
        return Err(format!("signed for {}, not {method}", st.method));
    }
    let path: Vec<Hash> = sig.batch_path.iter().map(|p| p.as_slice().try_into().map_err(|_| "a path hash is not 32 bytes")).collect::<Result<_, _>>()?;
    let root = merkle::root_from_path(&leaf(&st), sig.batch_index as usize, sig.batch_size as usize, &path).ok_or("the batch path does not fit the batch")?;
    let bytes = batch_bytes(chain_id, epoch, st.bank, sig.batch_size, &root);
    if !crypto.verify_operation(st.bank as usize, &bytes, &sig.signature) {
        return Err(format!("bank {}'s signature does not verify", st.bank));
    }
    Ok(st)
}

/// The streams whose messages are signed, each message on its own.
pub const STREAM_METHODS: &[&str] = &["/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive"];

/// The field number a stream message's `AnswerSignature` is appended under. etcd's
/// WatchResponse (1-7, 11) and LeaseKeepAliveResponse (1-3) do not use it, and every protobuf
/// decoder (Go's in etcdctl and kube-apiserver, prost) skips a field it does not know.
pub const STREAM_FIELD: u32 = 1000;

/// The requests' chain before any request: see `AnswerStatement.stream_requests`.
pub const NO_REQUESTS: Hash = [0; 32];

/// The requests' chain with one more request (its message digest).
pub fn chain_request(chain: &Hash, request_digest: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(chain);
    h.update(request_digest);
    h.finalize().into()
}

/// The bytes to append to a stream message to carry its signature (one length-delimited field).
pub fn signature_field(sig: &AnswerSignature) -> Vec<u8> {
    let value = sig.encode_to_vec();
    let mut out = Vec::with_capacity(value.len() + 8);
    prost::encoding::encode_key(STREAM_FIELD, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(&value);
    out
}

/// A received stream message split into the response the bank signed (everything before the
/// signature field) and the signature; None when it came unsigned. The signature field must be
/// the message's last: nothing after it is covered.
pub fn split_stream_message(message: &[u8]) -> Result<(&[u8], Option<AnswerSignature>), String> {
    let mut rest = message;
    while !rest.is_empty() {
        let start = message.len() - rest.len();
        let key = prost::encoding::decode_varint(&mut rest).map_err(|_| format!("not a protobuf message: bad field key at byte {start}"))?;
        let (field, wire) = (key >> 3, key & 7);
        let skip = match wire {
            0 => {
                prost::encoding::decode_varint(&mut rest).map_err(|_| format!("not a protobuf message: bad varint at byte {start}"))?;
                0
            }
            1 => 8,
            2 => usize::try_from(prost::encoding::decode_varint(&mut rest).map_err(|_| format!("not a protobuf message: bad length at byte {start}"))?).unwrap_or(usize::MAX),
            5 => 4,
            _ => return Err(format!("not a protobuf message: wire type {wire} at byte {start}")),
        };
        if skip > rest.len() {
            return Err(format!("not a protobuf message: field {field} at byte {start} runs past the end"));
        }
        let (value, after) = rest.split_at(skip);
        if field == u64::from(STREAM_FIELD) && wire == 2 {
            if !after.is_empty() {
                return Err(format!("the signature field at byte {start} is not the message's last"));
            }
            let sig = AnswerSignature::decode(value).map_err(|e| format!("the signature field does not decode: {e}"))?;
            return Ok((&message[..start], Some(sig)));
        }
        rest = after;
    }
    Ok((message, None))
}

/// One message of a kept stream, checked.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// The response without its signature field.
    pub response: Vec<u8>,
    /// None: it came unsigned (the bank's signer was saturated, or signing is off).
    pub statement: Option<AnswerStatement>,
}

/// Checks a kept stream (`AnswerStream`): every signed message's signature against the genesis's
/// keys, its response digest and revision, its requests against the kept requests, and that the
/// signed messages chain in order with no signed message missing between two kept ones, so a
/// bank cannot deny, drop or reorder what it sent. Returns every message, signed or not.
pub fn verify_stream(crypto: &dyn Crypto, chain_id: &str, epoch: u64, stream: &AnswerStream) -> Result<Vec<StreamMessage>, String> {
    if !STREAM_METHODS.contains(&stream.method.as_str()) {
        return Err(format!("{:?} is not a signed stream", stream.method));
    }
    let mut chains = Vec::with_capacity(stream.requests.len() + 1);
    chains.push(NO_REQUESTS);
    for r in &stream.requests {
        let next = chain_request(chains.last().unwrap_or(&NO_REQUESTS), &Sha256::digest(r));
        chains.push(next);
    }
    let mut out = Vec::with_capacity(stream.responses.len());
    // The last signed message: its index among the kept ones and its statement.
    let mut last: Option<(usize, AnswerStatement)> = None;
    for (i, message) in stream.responses.iter().enumerate() {
        let fail = |why: String| format!("message {i}: {why}");
        let (response, sig) = split_stream_message(message).map_err(fail)?;
        let Some(sig) = sig else {
            out.push(StreamMessage { response: response.to_vec(), statement: None });
            continue;
        };
        let st = check_signature(crypto, chain_id, epoch, &stream.method, &sig).map_err(fail)?;
        check_response(&st, response).map_err(fail)?;
        if st.stream_sequence == 0 {
            return Err(fail("signed as a unary answer, not a stream message".into()));
        }
        let requests = usize::try_from(st.stream_requests).ok().filter(|n| *n < chains.len()).ok_or_else(|| {
            fail(format!("signed after {} requests, but only {} are kept", st.stream_requests, stream.requests.len()))
        })?;
        if st.request_digest != chains[requests] {
            return Err(fail(format!("the signature is for other requests than the first {requests} kept")));
        }
        match &last {
            Some((j, prev)) => {
                if st.bank != prev.bank {
                    return Err(fail(format!("signed by bank {}, the message before by bank {}", st.bank, prev.bank)));
                }
                if Some(st.stream_sequence) != prev.stream_sequence.checked_add((i - j) as u64) {
                    return Err(fail(format!(
                        "sequence {} after {} {} messages before: messages are missing or out of order",
                        st.stream_sequence,
                        prev.stream_sequence,
                        i - j
                    )));
                }
                if st.stream_previous != leaf(prev) {
                    return Err(fail("does not chain to the signed message before it: another stream's, or a message is missing".into()));
                }
                if st.stream_requests < prev.stream_requests {
                    return Err(fail("signed after fewer requests than the message before".into()));
                }
            }
            None if st.stream_sequence == 1 && !st.stream_previous.is_empty() => {
                return Err(fail("the stream's first message names a message before it".into()));
            }
            None => {}
        }
        last = Some((i, st.clone()));
        out.push(StreamMessage { response: response.to_vec(), statement: Some(st) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::certs::sim::SimCrypto;
    use bftcd_proto::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};

    const WATCH: &str = "/etcdserverpb.Watch/Watch";

    /// A stream of `n` watch responses as a bank sends them: each signed, chained, appended;
    /// those in `unsigned` sent as they are, as when the signer is saturated.
    fn stream(n: usize, requests: &[Vec<u8>], unsigned: &[usize]) -> AnswerStream {
        let crypto = SimCrypto { me: 1, n: 4 };
        let chain = requests.iter().fold(NO_REQUESTS, |c, r| chain_request(&c, &Sha256::digest(r)));
        let mut previous = Vec::new();
        let mut responses = Vec::new();
        for i in 0..n {
            let response = WatchResponse { header: Some(ResponseHeader { revision: 10 + i as i64, ..Default::default() }), watch_id: 1, ..Default::default() }.encode_to_vec();
            if unsigned.contains(&i) {
                responses.push(response);
                continue;
            }
            let st = AnswerStatement {
                chain_id: "c".into(),
                epoch: 1,
                bank: 1,
                method: WATCH.into(),
                request_digest: chain.to_vec(),
                response_digest: Sha256::digest(&response).to_vec(),
                revision: 10 + i as i64,
                stream_sequence: i as u64 + 1,
                stream_previous: previous.clone(),
                stream_requests: requests.len() as u64,
                ..Default::default()
            };
            previous = leaf(&st).to_vec();
            let sig = sign_batch(&crypto, vec![st]).remove(0);
            let mut message = response;
            message.extend_from_slice(&signature_field(&sig));
            responses.push(message);
        }
        AnswerStream { endpoint: String::new(), method: WATCH.into(), requests: requests.to_vec(), responses }
    }

    fn requests() -> Vec<Vec<u8>> {
        vec![WatchRequest::default().encode_to_vec(), b"\x0a\x03\x0a\x01k".to_vec()]
    }

    #[test]
    fn a_signed_stream_verifies_and_decodes_as_etcd_s_message() {
        let s = stream(3, &requests(), &[]);
        let checked = verify_stream(&SimCrypto { me: 0, n: 4 }, "c", 1, &s).unwrap();
        assert_eq!(checked.iter().map(|m| m.statement.as_ref().unwrap().stream_sequence).collect::<Vec<_>>(), [1, 2, 3]);
        // A decoder that does not know the field skips it.
        let decoded = WatchResponse::decode(s.responses[1].as_slice()).unwrap();
        assert_eq!(decoded.header.unwrap().revision, 11);
        assert_eq!(decoded.encode_to_vec(), checked[1].response);
    }

    #[test]
    fn dropped_reordered_or_altered_messages_do_not_verify() {
        let crypto = SimCrypto { me: 0, n: 4 };
        let s = stream(4, &requests(), &[]);
        let mut dropped = s.clone();
        dropped.responses.remove(1);
        assert!(verify_stream(&crypto, "c", 1, &dropped).unwrap_err().contains("message 1"));
        let mut swapped = s.clone();
        swapped.responses.swap(1, 2);
        assert!(verify_stream(&crypto, "c", 1, &swapped).is_err());
        let mut altered = s.clone();
        altered.responses[2][3] ^= 1;
        assert!(verify_stream(&crypto, "c", 1, &altered).is_err());
        let mut other_requests = s.clone();
        other_requests.requests[1] = b"\x0a\x03\x0a\x01x".to_vec();
        assert!(verify_stream(&crypto, "c", 1, &other_requests).unwrap_err().contains("other requests"));
        // A suffix of the stream still verifies on its own.
        let mut suffix = s.clone();
        suffix.responses.drain(..2);
        assert_eq!(verify_stream(&crypto, "c", 1, &suffix).unwrap().len(), 2);
        // A message sent unsigned keeps its place: the next signed one chains past it.
        let unsigned = stream(4, &requests(), &[1]);
        let checked = verify_stream(&crypto, "c", 1, &unsigned).unwrap();
        assert!(checked[1].statement.is_none() && checked[2].statement.as_ref().unwrap().stream_sequence == 3);
        // Stripping a signed message's signature breaks the chain.
        let mut stripped = stream(4, &requests(), &[]);
        let (bare, _) = split_stream_message(&stripped.responses[1]).unwrap();
        stripped.responses[1] = bare.to_vec();
        assert!(verify_stream(&crypto, "c", 1, &stripped).unwrap_err().contains("does not chain"));
    }

    #[test]
    fn every_flipped_or_cut_byte_is_refused_or_reads_as_unsigned_without_panicking() {
        let crypto = SimCrypto { me: 0, n: 4 };
        let s = stream(2, &requests(), &[]);
        for len in 0..s.responses[1].len() {
            let mut cut = s.clone();
            cut.responses[1].truncate(len);
            if let Ok(checked) = verify_stream(&crypto, "c", 1, &cut) {
                assert!(checked[1].statement.is_none(), "cut to {len} bytes and still signed");
            }
        }
        for at in 0..s.responses[1].len() {
            let mut flipped = s.clone();
            flipped.responses[1][at] ^= 0xff;
            if let Ok(checked) = verify_stream(&crypto, "c", 1, &flipped) {
                assert!(checked[1].statement.is_none(), "byte {at} flipped and still signed");
            }
        }
    }

    #[test]
    fn splitting_refuses_malformed_messages_without_panicking() {
        assert!(split_stream_message(&[0xff]).is_err());
        assert!(split_stream_message(&[0x0a, 0x05, 1]).is_err());
        assert!(split_stream_message(&[0x0b]).is_err());
        assert_eq!(split_stream_message(&[]).unwrap().0, &[] as &[u8]);
        let mut trailing = signature_field(&AnswerSignature::default());
        trailing.extend_from_slice(&[0x10, 0x01]);
        assert!(split_stream_message(&trailing).unwrap_err().contains("last"));
    }
}
