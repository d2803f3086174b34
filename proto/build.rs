//! Generates the vault.v1 code and the encoded file descriptor set (for reflection).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs no system protoc.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("vault_v1_descriptor.bin"))
        .compile_protos(
            &[
                PathBuf::from("vault/v1/vault.proto"),
                PathBuf::from("vault/v1/custody.proto"),
            ],
            &[PathBuf::from("."), include],
        )?;
    println!("cargo:rerun-if-changed=vault/v1/vault.proto");
    println!("cargo:rerun-if-changed=vault/v1/custody.proto");
    Ok(())
}
