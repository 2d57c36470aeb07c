//! Transport helpers shared by the gateway (`asyncgate-server`) and the SDK
//! (`asyncgate-client`), kept out of the contract crate (`asyncgate-proto`):
//! how bytes reach a socket is not part of the protocol.
//!
//! # Layout
//! - `corked.rs`: [`corked::Corked`], write coalescing for HTTP/2
//!   connections (the gateway's accepted connections and the SDK's own).

#![warn(missing_docs)]

pub mod corked;
