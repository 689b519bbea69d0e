//! Wire definitions shared by every BFTcd crate.
//!
//! * [`etcdserverpb`], [`mvccpb`], [`authpb`]: the etcd v3 API, written for BFTcd and kept
//!   wire-compatible with etcd 3.5 (same packages, services and field numbers), so stock clients
//!   talk to the sidecar unchanged.
//! * [`bftcd`]: blocks, operations, certificates and ledger records (`proto/bftcd/ledger.proto`).
//! * [`grpc_health`]: gRPC's standard health service (`grpc.health.v1`), on the client port.

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod bftcd {
    pub mod v1 {
        tonic::include_proto!("bftcd.v1");
    }
    pub use v1::*;
}

/// Every message's descriptor (a protobuf `FileDescriptorSet`), for the JSON gateway.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod grpc_health {
    tonic::include_proto!("grpc.health.v1");
}

pub use prost;
pub use prost::Message;
