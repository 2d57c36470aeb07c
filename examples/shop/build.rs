//! Compiles `proto/shop/v1/shop.proto` with protox (pure Rust, no system
//! protoc) into tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "shop/v1/shop.proto";
    println!("cargo:rerun-if-changed=proto/{file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
