//! Helpers shared by the SDK's integration tests.

pub(crate) mod fake_workers;
