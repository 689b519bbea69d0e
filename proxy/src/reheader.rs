//! Swaps the header of an encoded etcd response without decoding anything else.
//!
//! Every etcd v3 response message carries its `ResponseHeader` as field 1, and the sidecar must
//! show clients this bank's ids there instead of those of the hidden local etcd (see
//! [`crate::identity`]). The rest of a Range response (possibly megabytes of key-values) is
//! already exactly what the client asked for, so decoding it into messages and encoding it again
//! is pure cost. Instead the top-level fields are walked (tags and lengths only), field 1 alone
//! is decoded and re-encoded, and every other field is passed on byte for byte, in its original
//! order, as slices of etcd's own buffer.
//!
//! The new header is written first. Protobuf parsers accept fields in any order (and etcd's own
//! encoder writes the header first anyway); a header that occurs several times is merged, as any
//! protobuf parser would. Only the framing of the other fields is checked here: their contents
//! are etcd's, and reach the client as etcd sent them.

use bytes::{BufMut, Bytes};
use bftcd_proto::etcdserverpb::ResponseHeader;
use prost::Message;

/// The field number of `header` in every etcd response.
const HEADER_FIELD: u32 = 1;
/// Tag of field 1 with wire type 2 (length-delimited): `(1 << 3) | 2`.
const HEADER_TAG: u8 = 0x0a;

/// etcd's response was not valid protobuf framing. Never expected from a stock etcd; refused
/// rather than passed on half-understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bftcd: the local etcd sent a malformed response: {0}")]
pub struct Malformed(&'static str);

impl From<Malformed> for tonic::Status {
    fn from(e: Malformed) -> Self {
        tonic::Status::internal(e.to_string())
    }
}

/// An encoded protobuf message held as consecutive runs of bytes: the re-encoded header, then
/// slices of the upstream buffer. Nothing is copied until the runs are written into the
/// outgoing gRPC frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    runs: Vec<Bytes>,
}

impl Encoded {
    /// Length of the whole message in bytes.
    pub fn len(&self) -> usize {
        self.runs.iter().map(Bytes::len).sum()
    }

    /// Appends the message to `dst`, run after run.
    pub fn write_to(&self, dst: &mut impl BufMut) {
        for run in &self.runs {
            dst.put_slice(run);
        }
    }

    /// The message as one contiguous buffer (copies unless it is a single run).
    #[cfg(test)]
    pub fn to_bytes(&self) -> Bytes {
        match self.runs.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            runs => {
                let mut out = Vec::with_capacity(self.len());
                for run in runs {
                    out.extend_from_slice(run);
                }
                out.into()
            }
        }
    }
}

impl From<Bytes> for Encoded {
    fn from(b: Bytes) -> Self {
        Encoded { runs: if b.is_empty() { vec![] } else { vec![b] } }
    }
}

/// Replaces the header (field 1) of the encoded response `body` by `header(upstream)`, where
/// `upstream` is the header etcd sent (`None` when it sent none). Every other top-level field is
/// kept byte for byte, in order.
pub fn replace_header(
    body: Bytes,
    header: impl FnOnce(Option<ResponseHeader>) -> Option<ResponseHeader>,
) -> Result<Encoded, Malformed> {
    let mut upstream: Option<ResponseHeader> = None;
    // Runs of non-header fields, as ranges of `body`; adjacent fields share one run.
    let mut kept: Vec<(usize, usize)> = Vec::with_capacity(2);
    let mut run_start = 0;
    let mut pos = 0;
    while pos < body.len() {
        let field_start = pos;
        let (number, value) = next_field(&body, &mut pos)?;
        if number != HEADER_FIELD {
            continue;
        }
        let Value::Delimited(start) = value else {
            return Err(Malformed("header (field 1) is not length-delimited"));
        };
        upstream
            .get_or_insert_with(ResponseHeader::default)
            .merge(&body[start..pos])
            .map_err(|_| Malformed("header (field 1) does not decode"))?;
        if run_start < field_start {
            kept.push((run_start, field_start));
        }
        run_start = pos;
    }
    if run_start < body.len() {
        kept.push((run_start, body.len()));
    }

    let mut runs = Vec::with_capacity(kept.len() + 1);
    if let Some(h) = header(upstream) {
        let mut field = Vec::with_capacity(2 + h.encoded_len());
        field.push(HEADER_TAG);
        h.encode_length_delimited(&mut field).expect("a Vec grows as needed");
        runs.push(Bytes::from(field));
    }
    runs.extend(kept.into_iter().map(|(a, b)| body.slice(a..b)));
    Ok(Encoded { runs })
}

/// Where a field's value starts, by wire type; only length-delimited values are needed.
enum Value {
    Scalar,
    Delimited(usize),
}

/// Reads one top-level field at `*pos` and moves `*pos` past it. Returns the field number and,
/// for a length-delimited field, where its value starts (it ends at the new `*pos`).
fn next_field(buf: &[u8], pos: &mut usize) -> Result<(u32, Value), Malformed> {
    let tag = read_varint(buf, pos)?;
    let tag = u32::try_from(tag).map_err(|_| Malformed("field tag out of range"))?;
    let number = tag >> 3;
    if number == 0 {
        return Err(Malformed("field number 0"));
    }
    let value = match tag & 7 {
        0 => {
            read_varint(buf, pos)?;
            Value::Scalar
        }
        1 => {
            skip(buf, pos, 8)?;
            Value::Scalar
        }
        2 => {
            let len = read_varint(buf, pos)?;
            let len = usize::try_from(len).map_err(|_| Malformed("field length out of range"))?;
            let start = *pos;
            skip(buf, pos, len)?;
            Value::Delimited(start)
        }
        5 => {
            skip(buf, pos, 4)?;
            Value::Scalar
        }
        // 3 and 4 are the deprecated groups, which etcd's messages never use; 6 and 7 do not exist.
        _ => return Err(Malformed("unsupported wire type")),
    };
    Ok((number, value))
}

fn skip(buf: &[u8], pos: &mut usize, len: usize) -> Result<(), Malformed> {
    if buf.len() - *pos < len {
        return Err(Malformed("field runs past the end of the message"));
    }
    *pos += len;
    Ok(())
}

/// A base-128 varint of at most 10 bytes whose value fits 64 bits.
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = buf.get(*pos) else {
            return Err(Malformed("varint runs past the end of the message"));
        };
        *pos += 1;
        // The tenth byte holds only the top bit of a 64-bit value.
        if i == 9 && byte > 1 {
            return Err(Malformed("varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Malformed("varint overflows 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::etcdserverpb::RangeResponse;
    use bftcd_proto::mvccpb::KeyValue;
    use rand::{Rng, SeedableRng};

    fn ours(upstream: Option<ResponseHeader>) -> Option<ResponseHeader> {
        Some(ResponseHeader { cluster_id: 7, member_id: 8, revision: upstream.map(|h| h.revision).unwrap_or_default(), raft_term: 1 })
    }

    fn header_field(h: &ResponseHeader) -> Vec<u8> {
        let mut v = vec![HEADER_TAG];
        h.encode_length_delimited(&mut v).unwrap();
        v
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_revision: 2, mod_revision: 5, version: 3, lease: 0 }
    }

    fn sample() -> RangeResponse {
        RangeResponse {
            header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 42, raft_term: 9 }),
            kvs: vec![kv("a", "1"), kv("b", "two")],
            more: true,
            count: 17,
        }
    }

    /// What the sidecar answered before the pass-through: decode, swap the header, encode.
    fn old_path(body: &[u8]) -> RangeResponse {
        let mut r = RangeResponse::decode(body).unwrap();
        r.header = ours(r.header);
        r
    }

    fn swap(body: Vec<u8>) -> Result<Bytes, Malformed> {
        replace_header(Bytes::from(body), ours).map(|e| e.to_bytes())
    }

    #[test]
    fn header_first_as_etcd_sends_it() {
        let body = sample().encode_to_vec();
        let out = swap(body.clone()).unwrap();
        let mut want = sample();
        want.header = ours(want.header);
        assert_eq!(out, want.encode_to_vec());
        assert_eq!(RangeResponse::decode(out).unwrap(), old_path(&body));
    }

    #[test]
    fn header_last_or_in_the_middle_moves_to_the_front() {
        let r = sample();
        let header = header_field(r.header.as_ref().unwrap());
        let rest = RangeResponse { header: None, ..r.clone() }.encode_to_vec();
        let new_header = header_field(&ours(r.header).unwrap());
        // Last.
        let body = [rest.clone(), header.clone()].concat();
        let out = swap(body.clone()).unwrap();
        assert_eq!(out, [new_header.clone(), rest.clone()].concat());
        assert_eq!(RangeResponse::decode(out).unwrap(), old_path(&body));
        // Between the two kvs: the fields around it keep their order.
        let first_kv_len = RangeResponse { kvs: vec![r.kvs[0].clone()], ..Default::default() }.encoded_len();
        let body = [&rest[..first_kv_len], &header, &rest[first_kv_len..]].concat();
        let out = swap(body.clone()).unwrap();
        assert_eq!(out, [new_header, rest].concat());
        assert_eq!(RangeResponse::decode(out).unwrap(), old_path(&body));
    }

    #[test]
    fn missing_header_gets_ours_with_revision_zero() {
        let body = RangeResponse { header: None, ..sample() }.encode_to_vec();
        let out = swap(body.clone()).unwrap();
        let decoded = RangeResponse::decode(out).unwrap();
        assert_eq!(decoded.header, ours(None));
        assert_eq!(decoded, old_path(&body));
        // An empty message (etcd omits every default field) still gets a header.
        assert_eq!(RangeResponse::decode(swap(vec![]).unwrap()).unwrap().header, ours(None));
    }

    #[test]
    fn no_header_when_the_rewrite_drops_it() {
        let body = sample().encode_to_vec();
        let out = replace_header(Bytes::from(body), |_| None).unwrap().to_bytes();
        assert_eq!(out, RangeResponse { header: None, ..sample() }.encode_to_vec());
    }

    #[test]
    fn repeated_header_is_merged_and_written_once() {
        let a = header_field(&ResponseHeader { revision: 3, ..Default::default() });
        let b = header_field(&ResponseHeader { revision: 11, member_id: 5, ..Default::default() });
        let rest = RangeResponse { count: 2, ..Default::default() }.encode_to_vec();
        let body = [a, rest.clone(), b].concat();
        let mut seen = None;
        let out = replace_header(Bytes::from(body.clone()), |h| {
            seen = h;
            ours(h)
        })
        .unwrap();
        assert_eq!(seen, Some(ResponseHeader { revision: 11, member_id: 5, ..Default::default() }));
        assert_eq!(RangeResponse::decode(out.to_bytes()).unwrap(), old_path(&body));
    }

    #[test]
    fn unknown_fields_are_kept_byte_for_byte_in_order() {
        let mut unknown = Vec::new();
        unknown.extend([0x38, 0x96, 0x01]); // field 7, varint 150
        unknown.extend([0x41, 1, 2, 3, 4, 5, 6, 7, 8]); // field 8, fixed64
        unknown.extend([0x4d, 9, 9, 9, 9]); // field 9, fixed32
        unknown.extend([0xd2, 0x02, 3, b'x', b'y', b'z']); // field 42, 3 bytes
        let r = sample();
        let rest = RangeResponse { header: None, ..r.clone() }.encode_to_vec();
        let body = [header_field(r.header.as_ref().unwrap()), unknown.clone(), rest.clone()].concat();
        let out = swap(body.clone()).unwrap();
        assert_eq!(out, [header_field(&ours(r.header).unwrap()), unknown, rest].concat());
        assert_eq!(RangeResponse::decode(out).unwrap(), old_path(&body));
    }

    #[test]
    fn the_upstream_runs_are_slices_not_copies() {
        let body = Bytes::from(sample().encode_to_vec());
        let out = replace_header(body.clone(), ours).unwrap();
        let header_len = header_field(sample().header.as_ref().unwrap()).len();
        assert_eq!(out.runs.len(), 2);
        assert_eq!(out.runs[1].as_ptr(), body[header_len..].as_ptr());
        let mut written = Vec::new();
        out.write_to(&mut written);
        assert_eq!(written.len(), out.len());
        assert_eq!(Bytes::from(written), out.to_bytes());
    }

    #[test]
    fn malformed_input_is_refused() {
        let good = sample().encode_to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated value", good[..good.len() - 1].to_vec()),
            ("length past the end", vec![0x12, 0x05, 1, 2]),
            ("header length past the end", vec![0x0a, 0x7f]),
            ("truncated varint tag", vec![0x80]),
            ("truncated varint value", vec![0x18, 0xff]),
            ("truncated fixed64", vec![0x09, 1, 2, 3]),
            ("truncated fixed32", vec![0x0d, 1]),
            ("field number 0", vec![0x02, 0x00]),
            ("start group", vec![0x0b]),
            ("end group", vec![0x0c]),
            ("wire type 6", vec![0x0e, 0]),
            ("header as a varint", vec![0x08, 0x01]),
            ("header that does not decode", vec![0x0a, 0x02, 0x08, 0x80]),
            ("eleven-byte varint", [vec![0x18], vec![0xff; 10], vec![0x01]].concat()),
            ("varint over 64 bits", [vec![0x18], vec![0xff; 9], vec![0x02]].concat()),
            ("tag over 32 bits", vec![0x80, 0x80, 0x80, 0x80, 0x10, 0x00]),
            ("length over the message", vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (name, body) in cases {
            assert!(swap(body).is_err(), "{name} was accepted");
        }
        // The largest 64-bit varint is still fine.
        let max = [vec![0x18], vec![0xff; 9], vec![0x01]].concat();
        assert!(swap(max).is_ok());
    }

    #[test]
    fn malformed_is_an_internal_error() {
        let status = tonic::Status::from(swap(vec![0x0b]).unwrap_err());
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().starts_with("bftcd: the local etcd sent a malformed response"));
    }

    fn random_bytes(rng: &mut impl Rng, max: usize) -> Vec<u8> {
        let n = rng.gen_range(0..=max);
        (0..n).map(|_| rng.gen()).collect()
    }

    fn random_response(rng: &mut impl Rng) -> RangeResponse {
        let header = rng.gen_bool(0.9).then(|| ResponseHeader {
            cluster_id: rng.gen(),
            member_id: rng.gen(),
            revision: rng.gen_range(0..i64::MAX),
            raft_term: rng.gen(),
        });
        let kvs = (0..rng.gen_range(0..20))
            .map(|_| {
                let value_max = if rng.gen_bool(0.1) { 5000 } else { 100 };
                KeyValue {
                    key: random_bytes(rng, 40),
                    value: random_bytes(rng, value_max),
                    create_revision: rng.gen_range(0..1 << 40),
                    mod_revision: rng.gen_range(0..1 << 40),
                    version: rng.gen_range(0..1000),
                    lease: if rng.gen_bool(0.2) { rng.gen() } else { 0 },
                }
            })
            .collect();
        RangeResponse { header, kvs, more: rng.gen(), count: rng.gen_range(0..1 << 20) }
    }

    /// Splits an encoded message into its top-level fields (test-only: trusts the input).
    fn fields(body: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < body.len() {
            let start = pos;
            next_field(body, &mut pos).unwrap();
            out.push(body[start..pos].to_vec());
        }
        out
    }

    /// Random responses, with their fields shuffled and random unknown fields mixed in: the
    /// pass-through decodes to what the old decode-and-re-encode path answered, and keeps every
    /// non-header field byte for byte in its order.
    #[test]
    fn random_responses_match_the_decoding_path() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..2000 {
            let r = random_response(&mut rng);
            let mut parts = fields(&r.encode_to_vec());
            for _ in 0..rng.gen_range(0..3) {
                let mut unknown = Vec::new();
                prost::encoding::bytes::encode(rng.gen_range(100..1000), &random_bytes(&mut rng, 30), &mut unknown);
                let at = rng.gen_range(0..=parts.len());
                parts.insert(at, unknown);
            }
            if rng.gen_bool(0.5) {
                let a = rng.gen_range(0..parts.len().max(1));
                let b = rng.gen_range(0..parts.len().max(1));
                if a < parts.len() && b < parts.len() {
                    parts.swap(a, b);
                }
            }
            let body = parts.concat();
            let out = swap(body.clone()).unwrap();
            assert_eq!(RangeResponse::decode(out.clone()).unwrap(), old_path(&body));
            let others: Vec<Vec<u8>> = parts.into_iter().filter(|f| f[0] != HEADER_TAG).collect();
            let out_fields = fields(&out);
            assert_eq!(out_fields[0], header_field(&ours(r.header).unwrap()));
            assert_eq!(out_fields[1..], others[..]);
        }
    }

    /// Truncating a valid response anywhere either still parses (a cut between fields) or is
    /// refused; it never panics.
    #[test]
    fn truncation_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let body = random_response(&mut rng).encode_to_vec();
            for cut in 0..body.len() {
                let _ = swap(body[..cut].to_vec());
            }
        }
        for _ in 0..5000 {
            let _ = swap(random_bytes(&mut rng, 64));
        }
    }
}
