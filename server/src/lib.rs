//! Asyncgate: an asynchronous request/reply gateway for gRPC.
//!
//! # Layout
//! - [`auth`]: API keys, roles and tenants, enforced by one tower layer.
//! - [`domain`]: ticket model, ids, queue names, backoff — pure data, no I/O.
//! - [`engine`]: the storage boundary (`Engine` trait) and its implementations;
//!   every transition is atomic and lease-fenced.
//! - [`dispatch`]: per-queue actors that match ready tickets with worker
//!   credit, and the worker session protocol.
//! - [`limits`]: bounds on open calls (keyed and keyless) and on how long a
//!   request may take to arrive.
//! - [`rescue`]: tonic's refusals of unreadable requests rewritten into
//!   statuses that say what to fix; the header size limit.
//! - [`connect`]: the Connect protocol (JSON and binary, unary and server
//!   streaming) translated to gRPC for the same routes, beside gRPC-Web.
//! - [`metrics`]: Prometheus metrics per queue, per RPC (go-grpc-prometheus'
//!   families) and of the process; OpenMetrics or the classic text format.
//! - [`dashboard`]: `--dashboard`, the web dashboard's files embedded at
//!   build time and served at `/dashboard/` (the page calls over gRPC-Web).
//! - [`connection`]: calls open per connection; idle connections closed.
//! - [`body`]: response bodies that report their data and when a
//!   (streaming) call ends.
//! - [`hub`]: per-ticket fan-out of change events to watchers.
//! - [`rpc`]: thin tonic services (`Gateway`, `Workers`, `Admin` for
//!   operators, and `Operations`: tickets as `google.longrunning`
//!   operations), the edge validation in `rpc::convert`, and the watcher
//!   stream in `rpc::watch`.
//! - [`schedules`]: tickets the gateway submits itself on a cron expression
//!   or interval (`asyncgate.v1.Schedules`), each slot once.
//! - [`targets`]: target queues, worked by the gateway itself by calling an
//!   existing unary gRPC method or HTTP endpoint per ticket (an in-process
//!   worker session).
//! - [`timers`]: the timer loop, which is also the store's health probe
//!   behind `grpc.health.v1`.
//! - [`error`]: `GatewayError` and its one mapping to `tonic::Status`.
//! - [`layers`]: the tower stack every call passes through, in order.
//! - [`shutdown`]: initiate → drain(grace) → finish; the one owner of the
//!   shutdown tokens and of every background task.
//! - [`config`], [`server`], [`telemetry`]: flags, assembly (build → serve),
//!   logs and OTLP span export (`OTEL_*` variables and flags).
//! - `testing`: a real `redis-server` child for tests and benchmarks
//!   (feature `test-support`).

pub mod auth;
pub(crate) mod body;
pub mod callbacks;
pub mod config;
pub(crate) mod connect;
pub(crate) mod connection;
pub mod dashboard;
pub(crate) mod dispatch;
pub mod domain;
pub mod engine;
pub mod error;
pub(crate) mod hub;
pub(crate) mod layers;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod rescue;
pub mod rpc;
pub mod schedules;
pub mod server;
pub(crate) mod shutdown;
pub mod targets;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub(crate) mod time;
pub(crate) mod timers;

pub use config::Config;
pub use server::{Running, start, start_on};
