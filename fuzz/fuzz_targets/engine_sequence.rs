//! The engine's state machine: any sequence of operations keeps its
//! invariants (see `asyncgate_server::engine::model`).

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use asyncgate_server::engine::model::{Op, check};

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0..=8)? {
        0 => Op::Submit {
            priority: u.int_in_range(-2..=2)?,
            key: if u.arbitrary()? {
                Some(u.int_in_range(0..=3)?)
            } else {
                None
            },
        },
        1 => Op::Claim {
            session: u.int_in_range(0..=2)?,
            want: u.int_in_range(1..=3)?,
        },
        2 => Op::Succeed {
            lease: u.int_in_range(0..=15)?,
        },
        3 => Op::Fail {
            lease: u.int_in_range(0..=15)?,
            retryable: u.arbitrary()?,
        },
        4 => Op::Progress {
            lease: u.int_in_range(0..=15)?,
        },
        5 => Op::Release {
            lease: u.int_in_range(0..=15)?,
            delivered: u.arbitrary()?,
        },
        6 => Op::Cancel {
            ticket: u.int_in_range(0..=15)?,
        },
        7 => Op::EndSession {
            session: u.int_in_range(0..=2)?,
        },
        _ => Op::Timers {
            advance_secs: u.int_in_range(0..=40)?,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < 80
        && let Ok(next) = op(&mut u)
    {
        ops.push(next);
    }
    if ops.is_empty() {
        return;
    }
    // One runtime for every input: building one per input costs more than
    // the sequence itself.
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    });
    if let Err(broken) = runtime.block_on(check(ops.clone())) {
        panic!("invariant broken: {broken}\nops: {ops:?}");
    }
});
