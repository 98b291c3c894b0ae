//! Compiles `proto/` into prost messages and tonic clients and servers.
//!
//! The protos are parsed by `protox`, a pure-Rust compiler, so building Keel
//! never needs `protoc` on the machine.

use std::path::Path;

/// Every file we generate code for, relative to the include root `proto/`.
/// Each file holds one protobuf package, and each package becomes one module
/// at the crate root (see `src/lib.rs`).
const PROTO_FILES: [&str; 6] = [
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3electionpb/v3election.proto",
    "v3lockpb/v3lock.proto",
    "keelraftpb/raft.proto",
];

const PROTO_ROOT: &str = "proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let files: Vec<_> = PROTO_FILES
        .iter()
        .map(|file| Path::new(PROTO_ROOT).join(file))
        .collect();
    let descriptors = match protox::compile(&files, [PROTO_ROOT]) {
        Ok(descriptors) => descriptors,
        Err(error) => panic!("cannot compile the protos: {error}"),
    };

    if let Err(error) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
    {
        panic!("cannot generate code from the protos: {error}");
    }
}
