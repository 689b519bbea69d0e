//! etcd's messages as its JSON gateway writes and reads them: protobuf's JSON mapping with the
//! .proto field names, 64-bit integers as strings, bytes as base64, enums by name, fields at their
//! default value left out. Unary answers separate members with ", " (as etcd 3.5.16's gateway
//! does), stream messages with "," (its stream writer does not add the space).

use std::io;
use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde_json::ser::Formatter;

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    // The descriptors are compiled in from the same .proto files as the messages: they decode.
    POOL.get_or_init(|| {
        DescriptorPool::decode(bftcd_proto::FILE_DESCRIPTOR_SET)
            .expect("compiled-in descriptors decode")
    })
}

/// The descriptor of a message named in the gateway's route table (all exist in the .proto).
pub fn descriptor(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in the compiled-in descriptors"))
}

/// A request body, JSON, as the protobuf message `desc` (encoded). An empty body is the empty
/// message, as etcd's gateway takes it; unknown fields are ignored, as there.
pub fn request(desc: &MessageDescriptor, body: &[u8]) -> Result<Vec<u8>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    message(desc, value)
}

/// Every JSON value in a body (a stream's requests, one after another).
pub fn requests(desc: &MessageDescriptor, body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>() {
        out.push(message(desc, value.map_err(|e| e.to_string())?)?);
    }
    Ok(out)
}

fn message(desc: &MessageDescriptor, value: serde_json::Value) -> Result<Vec<u8>, String> {
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let m = DynamicMessage::deserialize_with_options(desc.clone(), value, &options)
        .map_err(|e| e.to_string())?;
    Ok(m.encode_to_vec())
}

fn options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true)
}

/// A protobuf answer as the JSON etcd's gateway writes for it; `spaced` for unary answers.
/// Fields the message does not know (a signed stream message's field 1000) are left out.
pub fn answer(desc: &MessageDescriptor, bytes: &[u8], spaced: bool) -> Result<Vec<u8>, String> {
    let m = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(bytes.len() * 2);
    if spaced {
        let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
        m.serialize_with_options(&mut ser, &options())
            .map_err(|e| e.to_string())?;
    } else {
        let mut ser = serde_json::Serializer::new(&mut out);
        m.serialize_with_options(&mut ser, &options())
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Compact JSON with ", " between members and elements.
struct Spaced;

impl Formatter for Spaced {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftcd_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
    use bftcd_proto::mvccpb::KeyValue;

    #[test]
    fn requests_read_as_etcds_gateway_reads_them() {
        let d = descriptor("etcdserverpb.RangeRequest");
        let m = RangeRequest::decode(
            &request(
                &d,
                br#"{"key":"Zm9v","limit":"2","sortOrder":"DESCEND","nope":1}"#,
            )
            .unwrap()[..],
        )
        .unwrap();
        assert_eq!(
            (m.key.as_slice(), m.limit, m.sort_order),
            (&b"foo"[..], 2, 2)
        );
        assert_eq!(
            RangeRequest::decode(&request(&d, br#"{"limit":3}"#).unwrap()[..])
                .unwrap()
                .limit,
            3
        );
        assert!(request(&d, b"").unwrap().is_empty());
        assert!(request(&d, b"{bad").is_err());
        assert!(request(&d, br#"{"key":"!!!"}"#).is_err());
        assert!(request(&d, br#"{"key":5}"#).is_err());
        assert!(request(&d, b"[1,2]").is_err());
        let deep = "[".repeat(100_000);
        assert!(
            request(&d, deep.as_bytes()).is_err(),
            "deep nesting is an error, not a stack overflow"
        );
    }

    /// Mangled bodies are errors or messages, never a panic.
    #[test]
    fn mangled_bodies_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seeds: &[&[u8]] = &[
            br#"{"compare":[{"target":"VALUE","key":"YQ==","value":"MQ==","result":"EQUAL"}],"success":[{"request_txn":{"success":[{"request_put":{"key":"YQ==","lease":"-1"}}]}}]}"#,
            br#"{"create_request":{"key":"YQ==","filters":["NOPUT"],"start_revision":"9223372036854775807"}}"#,
            br#"{"key":"YQ==","range_end":"AA==","limit":1e3,"sort_order":99,"revision":"-5"}"#,
        ];
        let names = [
            "etcdserverpb.TxnRequest",
            "etcdserverpb.WatchRequest",
            "etcdserverpb.RangeRequest",
        ];
        for _ in 0..3000 {
            let mut body = seeds[rng.gen_range(0..seeds.len())].to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng
                    .gen_range(0..body.len().max(1))
                    .min(body.len().saturating_sub(1));
                match rng.gen_range(0..3) {
                    0 => body[i] = rng.gen(),
                    1 => {
                        body.remove(i);
                    }
                    _ => {
                        let tokens = b"{}[]\":,-0e\\";
                        body.insert(i, tokens[rng.gen_range(0..tokens.len())]);
                    }
                }
            }
            let d = descriptor(names[rng.gen_range(0..names.len())]);
            let _ = request(&d, &body);
            let _ = requests(&d, &body);
        }
    }

    #[test]
    fn answers_are_written_as_etcds_gateway_writes_them() {
        let r = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 0,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                value: b"bar".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let d = descriptor("etcdserverpb.RangeResponse");
        let json = String::from_utf8(answer(&d, &r.encode_to_vec(), true).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"header":{"cluster_id":"1", "member_id":"2", "revision":"3"}, "kvs":[{"key":"Zm9v", "create_revision":"2", "mod_revision":"2", "version":"1", "value":"YmFy"}], "count":"1"}"#
        );
        let compact = String::from_utf8(answer(&d, &r.encode_to_vec(), false).unwrap()).unwrap();
        assert!(
            compact.starts_with(r#"{"header":{"cluster_id":"1","member_id":"2""#),
            "{compact}"
        );
        assert!(answer(&d, b"\xff\xff", true).is_err());
    }
}
