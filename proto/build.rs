// Compiles the etcd v3 API and BFTcd's ledger messages. protoc comes from a vendored crate so a
// fresh machine needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let includes = ["proto/etcd", "proto"];
    // The descriptors let the JSON gateway map etcd's messages to JSON by their .proto names.
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/etcd/mvccpb/kv.proto",
                "proto/etcd/authpb/auth.proto",
                "proto/etcd/etcdserverpb/rpc.proto",
                "proto/bftcd/ledger.proto",
                "proto/bftcd/peer.proto",
                "proto/bftcd/admin.proto",
                "proto/grpc/health/v1/health.proto",
            ],
            &includes,
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
