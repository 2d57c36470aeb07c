//! Unit tests of `engine/local.rs` and its submodules (`engine/local/`).

use super::*;

#[test]
fn positions_are_exact_for_short_queues_and_estimated_for_long_ones() {
    let mut index = QueueIndex::default();
    for seq in 0..10u64 {
        index.push((Reverse(0), seq), TicketId::new());
    }
    index.push((Reverse(5), 100), TicketId::new());
    index.remove(&(Reverse(0), 3));
    assert_eq!(
        index.ahead((Reverse(0), 5)),
        1 + 4,
        "one higher, four before it"
    );
    assert_eq!(index.ahead((Reverse(5), 100)), 0);
    let mut long = QueueIndex::default();
    for seq in 0..10_000u64 {
        long.push((Reverse(0), seq), TicketId::new());
    }
    assert!(long.pop_first().is_some());
    assert_eq!(long.ahead((Reverse(0), 9_999)), 9_998);
    assert_eq!(long.pending(), 9_999);
}
