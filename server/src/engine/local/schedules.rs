//! The local engine's schedules and queue targets: each a map under one
//! lock, each write journaled under it (so writes reach the journal in the
//! order they were applied) and answered once durable.

use std::time::SystemTime;

use super::super::journal::Mutation;
use super::{LocalEngine, lock};
use crate::domain::{QueueName, QueueTarget};
use crate::engine::{EngineError, ScheduleRecord};

impl LocalEngine {
    pub(super) async fn put_schedule_record(
        &self,
        mut record: ScheduleRecord,
        expected: u64,
    ) -> Result<u64, EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let seq = {
            let mut schedules = lock(&self.schedules);
            let current = schedules.get(&record.id).map_or(0, |r| r.revision);
            if current != expected {
                return Err(if expected == 0 {
                    EngineError::ScheduleExists(record.id)
                } else {
                    EngineError::ScheduleChanged(record.id)
                });
            }
            record.revision = expected + 1;
            let seq = self.journal_one(Mutation::PutSchedule(record.clone()));
            schedules.insert(record.id.clone(), record);
            seq
        };
        self.durable(seq).await?;
        Ok(expected + 1)
    }

    pub(super) async fn delete_schedule_record(&self, id: &str) -> Result<bool, EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let (existed, seq) = {
            let mut schedules = lock(&self.schedules);
            if schedules.remove(id).is_none() {
                return Ok(false);
            }
            let seq = self.journal_one(Mutation::DeleteSchedule { id: id.to_owned() });
            (true, seq)
        };
        self.durable(seq).await?;
        Ok(existed)
    }

    pub(super) async fn put_target(
        &self,
        queue: &QueueName,
        target: Option<QueueTarget>,
    ) -> Result<(), EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        if target.is_some() {
            self.queue(queue);
        }
        let seq = {
            let mut targets = lock(&self.targets);
            let seq = self.journal_one(Mutation::PutQueueTarget {
                queue: queue.clone(),
                target: target.clone(),
            });
            match target {
                Some(target) => targets.insert(queue.clone(), target),
                None => targets.remove(queue),
            };
            seq
        };
        self.durable(seq).await
    }

    pub(super) fn target_records(&self) -> Vec<(QueueName, QueueTarget)> {
        lock(&self.targets)
            .iter()
            .map(|(queue, target)| (queue.clone(), target.clone()))
            .collect()
    }

    fn journal_one(&self, mutation: Mutation) -> u64 {
        if self.journal.wants_mutations() {
            self.journal.append(vec![mutation], Vec::new())
        } else {
            0
        }
    }

    pub(super) fn schedule_record(&self, id: &str) -> Option<ScheduleRecord> {
        lock(&self.schedules).get(id).cloned()
    }

    pub(super) fn schedule_records(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Vec<ScheduleRecord> {
        use std::ops::Bound::{Excluded, Unbounded};
        let schedules = lock(&self.schedules);
        let range = if after.is_empty() {
            schedules.range::<str, _>((Unbounded, Unbounded))
        } else {
            schedules.range::<str, _>((Excluded(after), Unbounded))
        };
        range
            .map(|(_, record)| record)
            .filter(|record| record.id.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }

    pub(super) fn count_schedule_records(&self, prefix: &str) -> u64 {
        use std::ops::Bound::{Included, Unbounded};
        lock(&self.schedules)
            .range::<str, _>((Included(prefix), Unbounded))
            .take_while(|(id, _)| id.starts_with(prefix))
            .count() as u64
    }

    pub(super) fn due_schedule_records(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Vec<ScheduleRecord> {
        let schedules = lock(&self.schedules);
        let mut due: Vec<&ScheduleRecord> = schedules
            .values()
            .filter(|record| record.due.is_some_and(|at| at <= now))
            .collect();
        due.sort_by_key(|record| record.due);
        due.into_iter().take(limit).cloned().collect()
    }
}
