//! Compiles `asyncgate/v1/*.proto` with protox (pure Rust, no system protoc)
//! and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "asyncgate/v1/ticket.proto",
        "asyncgate/v1/gateway.proto",
        "asyncgate/v1/workers.proto",
        "asyncgate/bench/v1/echo.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("asyncgate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        // `Workers.Connect` would clash with the generated `connect` constructor;
        // clients are built from a `Channel` with `new` instead.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
