//! Property tests of the engine's state machine (see `model.rs` for the
//! invariants), on every engine but the Redis Cluster one (the same code as
//! the single Redis, slower to start). A
//! small case count runs in the normal test suite; raise it with
//! `PROPTEST_CASES=10000 cargo test -p asyncgate-server properties`.

use proptest::prelude::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::test_runner::{Config, TestRunner};

use super::Engine;
use super::model::{Op, check, check_on, config};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (-2i32..3, proptest::option::of(0u8..4)).prop_map(|(priority, key)| Op::Submit { priority, key }),
        3 => (0usize..3, 1usize..4).prop_map(|(session, want)| Op::Claim { session, want }),
        2 => (0usize..16).prop_map(|lease| Op::Succeed { lease }),
        2 => (0usize..16, any::<bool>()).prop_map(|(lease, retryable)| Op::Fail { lease, retryable }),
        1 => (0usize..16).prop_map(|lease| Op::Progress { lease }),
        1 => (0usize..16, any::<bool>()).prop_map(|(lease, delivered)| Op::Release { lease, delivered }),
        1 => (0usize..16).prop_map(|ticket| Op::Cancel { ticket }),
        1 => (0usize..16).prop_map(|ticket| Op::Retry { ticket }),
        1 => (0usize..16).prop_map(|ticket| Op::Delete { ticket }),
        1 => (0usize..3).prop_map(|session| Op::EndSession { session }),
        1 => (0u64..40).prop_map(|advance_secs| Op::Timers { advance_secs }),
    ]
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_state_machine_keeps_its_promises(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check(ops)).map_err(TestCaseError::fail)?;
    }
}

/// Runs generated sequences on engines from `open` (called once per case
/// with the case's number), reporting the shrinker's minimal failing
/// sequence.
fn run_cases<F>(default_cases: u32, open: impl Fn(usize) -> F)
where
    F: std::future::Future<Output = Result<Arc<dyn Engine>, String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(default_cases),
        ..Config::default()
    });
    let outcome = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        let case = case.fetch_add(1, Ordering::Relaxed);
        runtime
            .block_on(async { check_on(open(case).await?, ops).await })
            .map_err(TestCaseError::fail)
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

/// The same sequences on the durable engine (a fresh redb file per case:
/// the journal's write path under the same checks).
#[test]
fn the_durable_engine_keeps_the_same_promises() {
    let dir = tempfile::tempdir().expect("temp dir");
    run_cases(24, |case| {
        let path = dir.path().join(format!("case{case}.redb"));
        async move {
            let engine =
                crate::engine::durable::open(&path, config()).map_err(|e| e.to_string())?;
            Ok(Arc::new(engine) as Arc<dyn Engine>)
        }
    });
}

/// The same sequences on the Redis engine (its transitions go through Lua
/// scripts, pipelines and caches of its own): one `redis-server` for the
/// run, a key prefix of its own per case, so cases share nothing.
#[test]
fn the_redis_engine_keeps_the_same_promises() {
    let server = crate::testing::RedisServer::start().expect("redis-server starts");
    let url = server.url();
    run_cases(24, |case| {
        let url = url.clone();
        async move {
            let engine = crate::engine::redis::connect(
                &url,
                &format!("prop{case}"),
                &Default::default(),
                config(),
            )
            .await
            .map_err(|error| error.to_string())?;
            Ok(Arc::new(engine) as Arc<dyn Engine>)
        }
    });
}
