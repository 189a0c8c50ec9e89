//! Generates the gRPC code from `proto/strata/v1/*.proto` without a system `protoc`: protox
//! (pure Rust) parses the files into a `FileDescriptorSet`, tonic-prost-build generates from
//! it. Every `bytes` field becomes `bytes::Bytes`, so batches are never copied into a `Vec`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(root.join("strata/v1"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    protos.sort();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("strata/v1").display()
    );
    let fds = protox::compile(&protos, [&root])?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
