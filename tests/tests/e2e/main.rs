//! End-to-end tests: one binary, a module per area. Each test starts its own
//! gateway on an ephemeral loopback port, so they run in parallel.

mod admin;
mod admin_targets;
mod auth;
mod bad_input;
mod basics;
mod batch;
mod browser;
mod callbacks;
mod compression;
mod connect;
mod connect_es;
mod dashboard;
mod dashboard_views;
mod delayed;
mod durable;
mod grpc_web;
mod grpcurl;
mod hostile;
mod http_targets;
mod lifecycle;
mod limits;
mod list;
mod metrics;
mod operations;
mod permissions;
mod python;
mod python_sdk;
mod replicas;
mod schedules;
mod streams;
mod targets;
mod tls;
mod trace_context;
mod watch;
mod workers;
