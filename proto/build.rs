//! Compiles the .proto files with protox (pure Rust), so building twill needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/twill/v1/twill.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
