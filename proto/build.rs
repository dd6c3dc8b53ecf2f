//! Compiles the .proto files with protox (pure Rust), so building twill needs no system protoc.
//!
//! Twice: the messages and clients, then the servers in a directory of their own, built on
//! those same messages but for one: a `Watch` stream yields [`WatchFrame`]s (src/frame.rs), so a
//! member can send an event it encoded once to every watcher.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/twill/v1/twill.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // A watch message's event or snapshot is boxed: a `WatchResponse` holding either inline is
    // over half a kilobyte, copied at every layer a received message passes through.
    // Both sides decode with our codec (src/codec.rs).
    tonic_prost_build::configure()
        .build_server(false)
        .codec_path("crate::codec::SliceCodec")
        .boxed(".twill.v1.WatchResponse.msg.event")
        .boxed(".twill.v1.WatchResponse.msg.snapshot")
        .compile_fds(fds.clone())?;
    let servers = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::SliceCodec")
        .extern_path(".twill.v1", "crate::v1")
        .extern_path(".twill.v1.WatchResponse", "crate::frame::WatchFrame")
        .out_dir(servers)
        .compile_fds(fds)?;
    Ok(())
}
