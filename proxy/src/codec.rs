//! gRPC codecs for responses that stay encoded.
//!
//! Requests are prost messages as usual (the sidecar must read and check them). Responses of a
//! pass-through read are not: from the local etcd they are taken as the bytes etcd sent
//! ([`RawReply`]), and to the client they are written as already encoded runs ([`EncodedReply`]),
//! so a Range result is never decoded or re-encoded by the sidecar (see [`crate::reheader`]).
//! The prost halves are tonic-prost's own, so request decoding, its errors and its limits are
//! exactly those of the generated services.

use std::marker::PhantomData;

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::reheader::Encoded;

/// Client side: sends a prost `Req`, yields the response message's bytes as received.
pub struct RawReply<Req>(PhantomData<Req>);

impl<Req> Default for RawReply<Req> {
    fn default() -> Self {
        RawReply(PhantomData)
    }
}

impl<Req: Message + Send + 'static> Codec for RawReply<Req> {
    type Encode = Req;
    type Decode = Bytes;
    type Encoder = ProstEncoder<Req>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

/// Hands over the message bytes tonic has framed; a slice of its receive buffer, not a copy.
pub struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Server side: decodes a prost `Req`, writes an [`Encoded`] response as it is.
pub struct EncodedReply<Req>(PhantomData<Req>);

impl<Req> Default for EncodedReply<Req> {
    fn default() -> Self {
        EncodedReply(PhantomData)
    }
}

impl<Req: Message + Default + Send + 'static> Codec for EncodedReply<Req> {
    type Encode = Encoded;
    type Decode = Req;
    type Encoder = EncodedEncoder;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Writes an [`Encoded`] message into tonic's frame buffer, growing it once.
pub struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        item.write_to(dst);
        Ok(())
    }
}
