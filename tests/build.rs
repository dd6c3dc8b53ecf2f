//! Compiles the slice of etcd's v3 API that the benchmark peer drives (client side only), with
//! protox, so building the tests needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/etcd_kv.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        // As twill's own clients decode (twill_proto::codec), so the simulated flannel agents
        // pay for a message what the simulated twill agents pay.
        .codec_path("twill_proto::codec::SliceCodec")
        .compile_fds(fds)?;
    Ok(())
}
