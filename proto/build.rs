//! Compiles `asyncgate/v1/*.proto` and the vendored `google.longrunning`
//! API with protox (pure Rust, no system protoc) and writes the descriptor
//! set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "asyncgate/v1/ticket.proto",
        "asyncgate/v1/gateway.proto",
        "asyncgate/v1/workers.proto",
        "asyncgate/v1/admin.proto",
        "asyncgate/v1/schedules.proto",
        "asyncgate/v1/callbacks.proto",
        "asyncgate/bench/v1/echo.proto",
        // Vendored from googleapis (see google/README.md); protox brings the
        // google/protobuf/* well-known types itself.
        "google/longrunning/operations.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed=google");
    let fds = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection gets every file the gateway serves, google/api/* included,
    // so that grpcurl can resolve the options operations.proto carries; not
    // the benchmark's echo service, which only `asyncgate bench` serves (a
    // listed service that answers UNIMPLEMENTED misleads).
    let mut served = fds.clone();
    served
        .file
        .retain(|file| !file.name().starts_with("asyncgate/bench/"));
    std::fs::write(
        out_dir.join("asyncgate_descriptor.bin"),
        prost::Message::encode_to_vec(&served),
    )?;
    // google/api/* only declares options (HTTP bindings, client-library
    // settings) that no Rust code reads: generate no types for it.
    let mut codegen = fds;
    codegen
        .file
        .retain(|file| !file.name().starts_with("google/api/"));
    // `impl prost::Name` with type.googleapis.com URLs, so that messages pack
    // into `google.protobuf.Any` (Operation.response and .metadata) with
    // `Any::from_msg` and unpack with `Any::to_msg`.
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .bytes(".")
        // google.rpc.Status is tonic-types' type, the one tonic's rich errors
        // use; generating a second copy would make two incompatible types.
        .extern_path(".google.rpc", "::tonic_types::pb")
        // JSON payloads stay encoded end to end (see `src/json.rs`): no
        // process on the path decodes the tree unless it asks for a view.
        .extern_path(".google.protobuf.Value", "crate::json::JsonValue")
        // `Workers.Connect` would clash with the generated `connect` constructor;
        // clients are built from a `Channel` with `new` instead.
        .build_transport(false)
        .compile_fds_with_config(codegen, config)?;
    Ok(())
}
