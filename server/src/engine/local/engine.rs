//! The engine face of the local engine: `impl Engine for LocalEngine`,
//! each operation as the caller sees it, over the shard, index and journal
//! helpers of `local.rs`.

use super::*;

#[async_trait]
impl Engine for LocalEngine {
    fn set_listener(&self, listener: Arc<dyn EngineListener>) {
        self.journal.set_listener(listener.clone());
        let _ = self.listener.set(listener);
    }

    async fn submit(&self, new: NewTicket) -> Result<Submitted, EngineError> {
        let (ticket, created) = self.store_new(new)?;
        self.durable(ticket.journal_seq).await?;
        Ok(Submitted {
            ticket,
            created,
            tickets_ahead: None,
        })
    }

    async fn submit_batch(&self, batch: Vec<NewTicket>) -> Vec<Result<Submitted, EngineError>> {
        let stored = self.store_batch(batch);
        // Appends are durable in order: the last one covers the batch (and
        // the older tickets repeated keys named).
        let last = stored
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|(ticket, _)| ticket.journal_seq)
            .max()
            .unwrap_or(0);
        let durable = self.durable(last).await;
        stored
            .into_iter()
            .map(|result| {
                let (ticket, created) = result?;
                durable.clone()?;
                Ok(Submitted {
                    ticket,
                    created,
                    tickets_ahead: None,
                })
            })
            .collect()
    }

    async fn get(&self, id: TicketId) -> Result<Ticket, EngineError> {
        let ticket = {
            let shard = lock(self.shard(&id));
            match shard.tickets.get(&id) {
                Some(ticket) => Ticket::clone(ticket),
                None => return Err(Self::lookup_error(&shard, id)),
            }
        };
        self.durable(ticket.journal_seq).await?;
        Ok(ticket)
    }

    async fn get_with_chunks(
        &self,
        id: TicketId,
        after_seq: u64,
    ) -> Result<(Ticket, Vec<Chunk>), EngineError> {
        let (ticket, chunks) = {
            let shard = lock(self.shard(&id));
            let Some(ticket) = shard.tickets.get(&id) else {
                return Err(Self::lookup_error(&shard, id));
            };
            let chunks = shard
                .chunks
                .get(&id)
                .map(|chunks| {
                    let start = chunks.partition_point(|c| c.seq <= after_seq);
                    chunks[start..].to_vec()
                })
                .unwrap_or_default();
            (Ticket::clone(ticket), chunks)
        };
        self.durable(ticket.journal_seq).await?;
        // Chunks are numbered by event seq: none can follow the last event
        // (a snapshot without `after_seq` asks with `u64::MAX`), and then
        // the store is not read at all.
        if ticket.state.is_terminal() && self.journal.keeps_chunks() && after_seq < ticket.seq {
            let chunks = self.journal.read_chunks(id, after_seq).await?;
            return Ok((ticket, chunks));
        }
        Ok((ticket, chunks))
    }

    async fn tickets_ahead(&self, ticket: &Ticket) -> Result<u64, EngineError> {
        if ticket.state != TicketState::Pending || ticket.not_before.is_some() {
            return Ok(0);
        }
        let index = self.queue(&ticket.queue);
        let index = lock(&index);
        Ok(index.ahead((Reverse(ticket.priority), ticket.enqueue_seq)))
    }

    async fn list(&self, filter: ListFilter) -> Result<ListPage, EngineError> {
        let page_size = filter.page_size.max(1);
        // Keep the first `page_size + 1` matching tickets in the listing's
        // order (a max-heap of order keys, so the last kept is evicted
        // first): the extra one tells whether another page exists.
        let mut first: BinaryHeap<u128> = BinaryHeap::new();
        let mut picked: HashMap<u128, Ticket> = HashMap::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (id, ticket) in &shard.tickets {
                if !filter.past_cursor(*id) || !filter.admits(ticket) {
                    continue;
                }
                let key = filter.order_key(*id);
                if first.len() > page_size {
                    if first.peek().is_some_and(|last| key < *last) {
                        if let Some(evicted) = first.pop() {
                            picked.remove(&evicted);
                        }
                    } else {
                        continue;
                    }
                }
                first.push(key);
                picked.insert(key, Ticket::clone(ticket));
            }
        }
        let mut keys = first.into_sorted_vec();
        let more = keys.len() > page_size;
        keys.truncate(page_size);
        let tickets: Vec<Ticket> = keys
            .into_iter()
            .filter_map(|key| picked.remove(&key))
            .collect();
        let next = if more {
            tickets.last().map(|t| t.id)
        } else {
            None
        };
        let newest_write = tickets.iter().map(|t| t.journal_seq).max().unwrap_or(0);
        self.durable(newest_write).await?;
        Ok(ListPage { tickets, next })
    }

    async fn cancel(&self, id: TicketId, reason: &str) -> Result<Ticket, EngineError> {
        let now = SystemTime::now();
        let mut forget = None;
        let result = {
            let mut shard = lock(self.shard(&id));
            let shard = &mut *shard;
            let Some(mut ticket) = shard.tickets.remove(&id) else {
                return Err(Self::lookup_error(shard, id));
            };
            if ticket.state == TicketState::Pending {
                self.dequeue(shard, &ticket);
            }
            Self::clear_attempt_timer(shard, &ticket);
            let before = Before::of(&ticket);
            let result = match transition::cancel(&mut ticket, reason, now) {
                Ok(transition::Cancelled::Already) => Ok(Ticket::clone(&ticket)),
                Ok(transition::Cancelled::Now(revoked)) => {
                    if let Some(lease) = revoked {
                        forget = Some((lease.session_id, lease.lease_id));
                        self.revoke(
                            &lease,
                            id,
                            RevokeReason::Cancelled,
                            transition::cancel_message(reason),
                        );
                    }
                    self.settle(shard, &mut ticket, before, now);
                    Ok(Ticket::clone(&ticket))
                }
                Err(error) => Err(error),
            };
            shard.tickets.insert(id, ticket);
            result
        };
        if let Some((session_id, lease_id)) = forget {
            self.forget_session_lease(session_id, lease_id);
        }
        let ticket = result?;
        self.durable(ticket.journal_seq).await?;
        Ok(ticket)
    }

    async fn retry(&self, id: TicketId) -> Result<Ticket, EngineError> {
        let (ticket, ready) = self.apply_retry(id)?;
        if ready {
            self.notify_ready(&ticket.queue);
        }
        self.durable(ticket.journal_seq).await?;
        Ok(ticket)
    }

    async fn delete(&self, id: TicketId) -> Result<SystemTime, EngineError> {
        let (deleted_at, removed) = self.apply_delete(id)?;
        if let Some((key, id)) = removed.key {
            self.unlink_key(key, id);
        }
        self.durable(removed.journal_seq).await?;
        Ok(deleted_at)
    }

    async fn open_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        lock(self.session_shard(&session.session_id))
            .entry(session.session_id)
            .and_modify(|record| record.expires_at = record.expires_at.max(expires_at))
            .or_insert_with(|| SessionRecord {
                expires_at,
                leases: HashMap::new(),
            });
        Ok(())
    }

    async fn touch_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        match lock(self.session_shard(&session.session_id)).get_mut(&session.session_id) {
            Some(record) => {
                record.expires_at = record.expires_at.max(expires_at);
                Ok(())
            }
            None => Err(EngineError::SessionLost(session.session_id)),
        }
    }

    async fn close(&self) {
        // Joins the writer thread: off the runtime's threads.
        let journal = self.journal.clone();
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
    }

    async fn end_session(&self, session_id: SessionId) -> Result<(), EngineError> {
        let record = lock(self.session_shard(&session_id)).remove(&session_id);
        let mut ready = BTreeSet::new();
        let last_write = record.map_or(0, |r| self.lose_all(r.leases, &mut ready));
        for queue in ready {
            self.notify_ready(&queue);
        }
        self.durable(last_write).await
    }

    async fn claim(
        &self,
        queue: &QueueName,
        sessions: &[SessionInfo],
    ) -> Result<Vec<Claimed>, EngineError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let now = SystemTime::now();
        let (popped, leasing): (Vec<TicketId>, u64) = {
            let index = self.queue(queue);
            let mut index = lock(&index);
            let want = sessions.len().min(index.allowance(now));
            if want == 0 {
                return Ok(Vec::new());
            }
            let mut popped = Vec::with_capacity(want.min(index.ready.len()));
            while popped.len() < want {
                match index.pop_first() {
                    Some(id) => popped.push(id),
                    None => break,
                }
            }
            let leasing = index.spend(popped.len());
            (popped, leasing)
        };
        let mut claimed = Vec::with_capacity(popped.len());
        // The append that stored the claimed tickets as they were before the
        // lease (their submit, or their requeue).
        let mut stored_by = 0;
        for id in popped {
            let session = &sessions[claimed.len()];
            let mut shard = lock(self.shard(&id));
            let shard = &mut *shard;
            let Some(ticket) = shard.tickets.get_mut(&id) else {
                continue;
            };
            if ticket.state != TicketState::Pending || ticket.not_before.is_some() {
                continue;
            }
            let before = Before::of(ticket);
            stored_by = stored_by.max(ticket.journal_seq);
            let lease = transition::lease(ticket, session, now);
            if let Some(at) = lease.attempt_deadline {
                shard.timers.insert((at, Timer::AttemptDeadline, id));
            }
            self.commit(ticket, Some(EventKind::State), None);
            self.observe(before, ticket, now);
            claimed.push(Claimed {
                ticket: Arc::new(Ticket::clone(ticket)),
                lease,
            });
        }
        // Leased (or given up): no longer reserved against the cap (only a
        // capped queue reserved any: an unlimited one skips the lock).
        if leasing > 0 {
            lock(&self.queue(queue)).leased(leasing);
        }
        let mut kept = Vec::with_capacity(claimed.len());
        let mut orphaned = false;
        for c in claimed {
            let session_id = c.lease.session_id;
            let registered = match lock(self.session_shard(&session_id)).get_mut(&session_id) {
                Some(record) => {
                    record.leases.insert(c.lease.lease_id, c.ticket.id);
                    true
                }
                None => false,
            };
            if registered {
                kept.push(Some(c));
            } else {
                // The session expired while we were leasing: give it back.
                self.lose_lease(c.ticket.id, c.lease.lease_id, ReleaseReason::Undelivered);
                orphaned = true;
                kept.push(None);
            }
        }
        if orphaned {
            self.notify_ready(queue);
        }
        // By default a ticket may be handed out while its submit's commit
        // is still in flight (see `EngineConfig::dispatch_stored_only` for
        // what that costs and what it risks). The lease itself is never
        // waited for: it becomes durable with the next commit, before any
        // result under it is acknowledged (appends are committed in order);
        // a crash in between only forgets that the attempt started.
        let kept: Vec<Claimed> = kept.into_iter().flatten().collect();
        if !self.config.dispatch_stored_only {
            return Ok(kept);
        }
        if let Err(error) = self.durable(stored_by).await {
            for c in &kept {
                self.lose_lease(c.ticket.id, c.lease.lease_id, ReleaseReason::Undelivered);
            }
            return Err(error);
        }
        Ok(kept)
    }

    fn ready_count(&self, queue: &QueueName) -> Option<usize> {
        let index = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .cloned();
        // A paused or limited queue has only what it may give out.
        Some(index.map_or(0, |index| {
            let mut index = lock(&index);
            index.ready.len().min(index.allowance(SystemTime::now()))
        }))
    }

    async fn release(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> Result<(), EngineError> {
        let session = lock(self.shard(&ticket_id))
            .tickets
            .get(&ticket_id)
            .and_then(|t| t.lease.as_ref())
            .filter(|l| l.lease_id == lease_id)
            .map(|l| l.session_id);
        if let Some(session_id) = session {
            self.forget_session_lease(session_id, lease_id);
        }
        let (queue, seq) = self.lose_lease(ticket_id, lease_id, reason);
        if let Some(queue) = queue {
            self.notify_ready(&queue);
        }
        self.durable(seq).await
    }

    fn progress(&self, report: ProgressReport) -> Applied<()> {
        let applied = self.record_progress(report);
        let journal = self.journal.clone();
        Box::pin(async move { journal.durable(applied?).await })
    }

    fn complete(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Applied<Completion> {
        let applied = self.apply_completion(ticket_id, lease_id, outcome);
        let journal = self.journal.clone();
        Box::pin(async move {
            let completion = applied?;
            let (Completion::Recorded(ticket) | Completion::Duplicate(ticket)) = &completion;
            journal.durable(ticket.journal_seq).await?;
            Ok(completion)
        })
    }

    async fn run_timers(&self, now: SystemTime) -> Result<(), EngineError> {
        let mut ready = BTreeSet::new();
        let mut effects = TimerEffects::default();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let shard = &mut *shard;
            while let Some((at, timer, id)) = shard.timers.first() {
                if at > now {
                    break;
                }
                shard.timers.pop_first();
                ready.extend(self.fire(shard, at, timer, id, now, &mut effects));
            }
        }
        for (session_id, lease_id) in effects.forget {
            self.forget_session_lease(session_id, lease_id);
        }
        for (key, id) in effects.deleted_keys {
            self.unlink_key(key, id);
        }
        let mut last_write = effects.journal_seq;
        let mut expired_sessions = Vec::new();
        for sessions in self.sessions.iter() {
            lock(sessions).retain(|id, record| {
                let alive = record.expires_at > now;
                if !alive {
                    expired_sessions.push((*id, std::mem::take(&mut record.leases)));
                }
                alive
            });
        }
        for (session_id, leases) in expired_sessions {
            tracing::warn!(%session_id, leases = leases.len(), "worker session expired; its leases are lost");
            last_write = last_write.max(self.lose_all(leases, &mut ready));
        }
        ready.extend(self.eased_queues());
        for queue in ready {
            self.notify_ready(&queue);
        }
        self.durable(last_write).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, EngineError> {
        let queues: Vec<(QueueName, Arc<Mutex<QueueIndex>>)> = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, index)| (name.clone(), index.clone()))
            .collect();
        let mut infos: Vec<QueueInfo> = queues
            .iter()
            .map(|(name, index)| Self::queue_info_of(name, &lock(index)))
            .collect();
        infos.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(infos)
    }

    async fn queue_info(&self, queue: &QueueName) -> Result<Option<QueueInfo>, EngineError> {
        Ok(self
            .existing_queue(queue)
            .map(|index| Self::queue_info_of(queue, &lock(&index))))
    }

    async fn session_tickets(&self, session: &SessionInfo) -> Result<Vec<TicketId>, EngineError> {
        let mut tickets: Vec<TicketId> = lock(self.session_shard(&session.session_id))
            .get(&session.session_id)
            .map(|record| record.leases.values().copied().collect())
            .unwrap_or_default();
        tickets.sort();
        Ok(tickets)
    }

    async fn set_limits(
        &self,
        queue: &QueueName,
        limits: QueueLimits,
    ) -> Result<QueueInfo, EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let index = self.queue(queue);
        let (info, seq) = {
            let mut index = lock(&index);
            index.set_limits(limits, SystemTime::now());
            let seq = if self.journal.wants_mutations() {
                self.journal.append(
                    vec![Mutation::PutQueueLimits {
                        queue: queue.clone(),
                        limits,
                    }],
                    Vec::new(),
                )
            } else {
                0
            };
            (Self::queue_info_of(queue, &index), seq)
        };
        self.durable(seq).await?;
        // Looser limits may let waiting tickets go.
        self.notify_ready(queue);
        Ok(info)
    }

    async fn set_target(
        &self,
        queue: &QueueName,
        target: Option<crate::domain::QueueTarget>,
    ) -> Result<(), EngineError> {
        self.put_target(queue, target).await
    }

    async fn targets(&self) -> Result<Vec<(QueueName, crate::domain::QueueTarget)>, EngineError> {
        Ok(self.target_records())
    }

    async fn queue_flow(&self, queue: &QueueName) -> Result<QueueFlow, EngineError> {
        Ok(self
            .existing_queue(queue)
            .map(|index| {
                let index = lock(&index);
                QueueFlow {
                    pause: index.pause.clone(),
                    limits: index.limits,
                    running: index.counts.running,
                }
            })
            .unwrap_or_default())
    }

    async fn set_pause(
        &self,
        queue: &QueueName,
        pause: Option<QueuePause>,
    ) -> Result<QueueInfo, EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let index = self.queue(queue);
        let (info, seq, resumed) = {
            let mut index = lock(&index);
            let resumed = index.pause.is_some() && pause.is_none();
            index.pause = pause.clone();
            // Appended under the index lock: two pauses of one queue reach
            // the journal in the order they were applied.
            let seq = if self.journal.wants_mutations() {
                self.journal.append(
                    vec![Mutation::PutQueuePause {
                        queue: queue.clone(),
                        pause,
                    }],
                    Vec::new(),
                )
            } else {
                0
            };
            (Self::queue_info_of(queue, &index), seq, resumed)
        };
        self.durable(seq).await?;
        if resumed {
            self.notify_ready(queue);
        }
        Ok(info)
    }

    async fn put_schedule(
        &self,
        record: ScheduleRecord,
        expected: u64,
    ) -> Result<u64, EngineError> {
        self.put_schedule_record(record, expected).await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, EngineError> {
        self.delete_schedule_record(id).await
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<ScheduleRecord>, EngineError> {
        Ok(self.schedule_record(id))
    }

    async fn list_schedules(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError> {
        Ok(self.schedule_records(prefix, after, limit))
    }

    async fn due_schedules(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError> {
        Ok(self.due_schedule_records(now, limit))
    }

    async fn count_schedules(&self, prefix: &str) -> Result<u64, EngineError> {
        Ok(self.count_schedule_records(prefix))
    }

    async fn claim_callbacks(
        &self,
        now: SystemTime,
        limit: usize,
        hold: std::time::Duration,
    ) -> Result<Vec<Ticket>, EngineError> {
        Ok(self.claim_due_callbacks(now, limit, hold))
    }

    async fn retry_callback(&self, id: TicketId) -> Result<Ticket, EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let (ticket, seq) = self.apply_callback_retry(id)?;
        self.durable(seq).await?;
        Ok(ticket)
    }

    async fn record_callback(
        &self,
        id: TicketId,
        seq: u64,
        outcome: crate::domain::callback::CallbackOutcome,
    ) -> Result<bool, EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        match self.apply_callback(id, seq, outcome)? {
            Some(journal_seq) => {
                self.durable(journal_seq).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
