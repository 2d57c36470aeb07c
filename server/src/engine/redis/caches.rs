//! What this replica remembers to save round trips: where recently seen
//! tickets live. A ticket never changes queue, so an entry is never stale;
//! the cache only has to stay bounded.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{LEASE_SHARDS, lock};
use crate::domain::{QueueName, TicketId};

/// Ticket id → queue for tickets this replica saw lately, so most reads skip
/// the locator lookup. Two generations per shard bound its size.
pub(super) struct LocatorCache {
    shards: Box<[Mutex<Generations>]>,
}

/// The current and the previous generation of a cache shard.
type Generations = [HashMap<TicketId, QueueName>; 2];

/// Entries per shard generation.
const LOCATOR_GENERATION: usize = 8192;

impl Default for LocatorCache {
    fn default() -> Self {
        Self {
            shards: (0..LEASE_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl LocatorCache {
    /// The shard that holds `id`.
    fn shard(&self, id: TicketId) -> &Mutex<Generations> {
        &self.shards[(id.0.as_u128() as usize) % LEASE_SHARDS]
    }

    /// The queue of `id`, if this replica saw it lately.
    pub(super) fn get(&self, id: TicketId) -> Option<QueueName> {
        let generations = lock(self.shard(id));
        generations[0]
            .get(&id)
            .or_else(|| generations[1].get(&id))
            .cloned()
    }

    /// Remembers that `id` lives in `queue`; a full generation becomes the
    /// previous one, dropping the one before.
    pub(super) fn insert(&self, id: TicketId, queue: &QueueName) {
        let mut generations = lock(self.shard(id));
        if generations[0].len() >= LOCATOR_GENERATION {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(id, queue.clone());
    }
}
