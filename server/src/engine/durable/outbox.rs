//! The journal's end of the writer's channel: appends are numbered and sent
//! in that order, and while a batch is being stored (a hold, see
//! `Journal::hold`) they wait here, merged into one append, so that the
//! writer takes the whole batch in one group commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use super::super::TicketChange;
use super::super::journal::Mutation;
use super::watermark::Append;

/// Mutations held at most before they go anyway: batches whose holds
/// overlap without a gap cannot keep the writer waiting for long. One batch
/// (at most 1,000 tickets, a mutation each) never reaches it alone.
const HELD_LIMIT: usize = 4096;

/// See the module docs.
pub(super) struct Outbox {
    state: Mutex<State>,
    /// Set when an append could not reach the writer (it stopped).
    poisoned: Arc<AtomicBool>,
}

struct State {
    /// The last append's number.
    last: u64,
    /// To the writer; `None` once the journal is closed.
    channel: Option<mpsc::Sender<Append>>,
    /// Holds taken and not yet released.
    holds: usize,
    /// What was appended during the holds, as one append numbered by its
    /// last part (the watermark then covers every part at once).
    held: Option<Append>,
}

impl Outbox {
    pub(super) fn new(channel: mpsc::Sender<Append>, poisoned: Arc<AtomicBool>) -> Self {
        Self {
            state: Mutex::new(State {
                last: 0,
                channel: Some(channel),
                holds: 0,
                held: None,
            }),
            poisoned,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers an append and sends it, or keeps it while held.
    pub(super) fn append(&self, mutations: Vec<Mutation>, events: Vec<TicketChange>) -> u64 {
        let mut state = self.lock();
        state.last += 1;
        let seq = state.last;
        let append = Append {
            seq,
            mutations,
            events,
        };
        if state.holds == 0 {
            self.send(&state, append);
            return seq;
        }
        let held = match state.held.take() {
            Some(mut held) => {
                held.seq = seq;
                held.mutations.extend(append.mutations);
                held.events.extend(append.events);
                held
            }
            None => append,
        };
        if held.mutations.len() >= HELD_LIMIT {
            self.send(&state, held);
        } else {
            state.held = Some(held);
        }
        seq
    }

    /// See `Journal::hold`.
    pub(super) fn hold(&self) {
        self.lock().holds += 1;
    }

    /// See `Journal::release`: the last release sends what was held.
    pub(super) fn release(&self) {
        let mut state = self.lock();
        state.holds = state.holds.saturating_sub(1);
        if state.holds == 0
            && let Some(held) = state.held.take()
        {
            self.send(&state, held);
        }
    }

    /// Closes the channel (after sending anything held): the writer
    /// finishes what it has and exits.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        if let Some(held) = state.held.take() {
            self.send(&state, held);
        }
        state.channel = None;
    }

    fn send(&self, state: &State, append: Append) {
        let delivered = state
            .channel
            .as_ref()
            .is_some_and(|channel| channel.send(append).is_ok());
        if !delivered {
            self.poisoned.store(true, Ordering::Release);
        }
    }
}
