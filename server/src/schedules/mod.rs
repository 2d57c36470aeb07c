//! Schedules: tickets submitted by the gateway itself at the times a cron
//! expression or an interval names, on every engine, each slot once.
//!
//! # Layout
//! - `spec.rs`: when a schedule fires (cron in a time zone, or an interval).
//! - `model.rs`: the schedule, its ticket template, overlap policy and runs.
//! - `record.rs`: its stored form (opaque bytes to the engines).
//! - `service.rs`: the operations behind `asyncgate.v1.Schedules`.
//! - `runner.rs`: the loop every replica runs that fires due slots.

pub mod model;
pub mod record;
pub mod runner;
pub mod service;
pub mod spec;

pub use model::Schedule;
pub use service::{Definition, ScheduleError, Schedules, Seen};

#[cfg(test)]
mod tests;
