//! Property tests of the engine's state machine (see `model.rs` for the
//! invariants). A small case count runs in the normal test suite; raise it
//! with `PROPTEST_CASES=10000 cargo test -p asyncgate-server properties`.

use proptest::prelude::*;

use super::model::{Op, check};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (-2i32..3, proptest::option::of(0u8..4)).prop_map(|(priority, key)| Op::Submit { priority, key }),
        3 => (0usize..3, 1usize..4).prop_map(|(session, want)| Op::Claim { session, want }),
        2 => (0usize..16).prop_map(|lease| Op::Succeed { lease }),
        2 => (0usize..16, any::<bool>()).prop_map(|(lease, retryable)| Op::Fail { lease, retryable }),
        1 => (0usize..16).prop_map(|lease| Op::Progress { lease }),
        1 => (0usize..16, any::<bool>()).prop_map(|(lease, delivered)| Op::Release { lease, delivered }),
        1 => (0usize..16).prop_map(|ticket| Op::Cancel { ticket }),
        1 => (0usize..3).prop_map(|session| Op::EndSession { session }),
        1 => (0u64..40).prop_map(|advance_secs| Op::Timers { advance_secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(48),
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
