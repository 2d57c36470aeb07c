//! End-to-end tests: one binary, a module per area. Each test starts its own
//! gateway on an ephemeral loopback port, so they run in parallel.

mod auth;
mod bad_input;
mod basics;
mod durable;
mod grpcurl;
mod hostile;
mod lifecycle;
mod limits;
mod replicas;
mod tls;
mod watch;
mod workers;
