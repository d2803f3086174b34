//! Generates the echo service the load generator uses as its transport
//! baseline (a vendored protoc, as vault-proto does).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure().compile_protos(
        &[std::path::PathBuf::from("proto/echo.proto")],
        &[std::path::PathBuf::from("proto"), include],
    )?;
    println!("cargo:rerun-if-changed=proto/echo.proto");
    Ok(())
}
