//! Rust SDK for Asyncgate: submit and follow tickets ([`Client`]) and serve
//! queues ([`worker::Worker`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), asyncgate_client::ClientError> {
//! use asyncgate_client::{Client, Submit};
//! use futures::StreamExt as _;
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let ticket = client.submit(Submit::new("upper").json(serde_json::json!("hi"))).await?;
//! let mut events = client.watch(&ticket.id, None).await?;
//! while let Some(event) = events.next().await {
//!     println!("{:?}", event?.kind());
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `client.rs`: [`Client`] (connect, submit, submit_batch, execute, get
//!   with long-poll, watch, cancel, list) and [`endpoint`], the transport
//!   settings.
//! - `stream.rs`: [`EventStream`], which resumes a broken watch from its seq
//!   cursor with no gap and no duplicate; the cursor rules are a pure type.
//! - `submit.rs`: [`Submit`], the builder for `SubmitRequest`.
//! - `payload.rs`: payload constructors/readers, JSON ⇄ `google.protobuf.Value`,
//!   [`is_terminal`].
//! - `convert.rs`: `std::time` ⇄ protobuf `Duration`/`Timestamp`.
//! - `error.rs`: [`ClientError`] and the transient-or-final rule.
//! - `retry.rs`: jittered exponential backoff (crate-private).
//! - `worker/`: the worker SDK ([`worker::Worker`], [`worker::Handler`],
//!   [`worker::TaskContext`]): connection loop, heartbeats, reconnects,
//!   exactly one result per lease.
//!
//! The `asyncgate` CLI, built on the above, is the `asyncgate-cli` package
//! (`cli/`).

#![warn(missing_docs)]

mod admin;
mod client;
pub mod convert;
mod credentials;
mod error;
mod otel;
pub mod payload;
mod retry;
mod schedules;
mod stream;
mod streams;
mod submit;
mod tls;
pub mod transport;
pub mod worker;

/// Largest message the SDK sends or accepts (tonic's default is 4 MiB, and
/// a task carrying a payload at the gateway's default limit of 4 MiB is
/// larger than that with its envelope: one such task would have broken the
/// worker's whole stream).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The most requests one [`Client::submit_batch`] may carry: the gateway
/// refuses a larger batch as a whole (INVALID_ARGUMENT naming `requests`).
pub const SUBMIT_BATCH_LIMIT: usize = 1000;

/// The generated `asyncgate.v1` messages and stubs.
pub use asyncgate_proto::v1 as pb;

pub use admin::Admin;
pub use client::{Client, CompressionEncoding, endpoint, endpoint_with};
pub use credentials::{Credentials, Transport};
pub use error::ClientError;
pub use payload::is_terminal;
pub use schedules::Schedules;
pub use stream::{EventStream, ResumeOptions};
pub use streams::{Results, SUBMITTER_IN_FLIGHT, Submitter};
pub use submit::Submit;
pub use tls::Tls;
