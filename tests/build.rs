//! Compiles the subset of etcd's API the benchmark uses (client side only), with protox.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/etcd_subset.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
