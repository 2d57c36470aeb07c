//! Schedules in Redis: a hash per schedule and two indexes (every id, and
//! ids by next due time), all under the `{schedules}` hash tag so that
//! `schedule.lua` writes a schedule and its indexes atomically, fenced by
//! its revision: two replicas handling the same slot write it once.

use std::time::SystemTime;

use redis::Value;

use super::Inner;
use super::layout;
use super::store::QueryKind;
use crate::engine::{EngineError, ScheduleRecord};

/// A schedule's revision, body and due time (ms) as read.
type Row = (Option<u64>, Option<Vec<u8>>, Option<f64>);

impl Inner {
    pub(super) async fn put_schedule(
        &self,
        record: ScheduleRecord,
        expected: u64,
    ) -> Result<u64, EngineError> {
        let keys = [
            self.keys.schedule(&record.id),
            self.keys.schedule_ids(),
            self.keys.schedules_due(),
        ];
        let args: Vec<Vec<u8>> = vec![
            b"put".to_vec(),
            record.id.clone().into_bytes(),
            expected.to_string().into_bytes(),
            record.body.to_vec(),
            record
                .due
                .map(|at| layout::millis_ceil(at).to_string())
                .unwrap_or_default()
                .into_bytes(),
        ];
        let (written, revision): (i64, u64) = self
            .run(|| QueryKind::Cmd(self.evalsha(&self.scripts.schedule, &keys, args.clone())))
            .await?;
        match written {
            1 => Ok(revision),
            _ if expected == 0 => Err(EngineError::ScheduleExists(record.id)),
            _ => Err(EngineError::ScheduleChanged(record.id)),
        }
    }

    pub(super) async fn delete_schedule(&self, id: &str) -> Result<bool, EngineError> {
        let keys = [
            self.keys.schedule(id),
            self.keys.schedule_ids(),
            self.keys.schedules_due(),
        ];
        let args = vec![b"del".to_vec(), id.as_bytes().to_vec()];
        let deleted: i64 = self
            .run(|| QueryKind::Cmd(self.evalsha(&self.scripts.schedule, &keys, args.clone())))
            .await?;
        Ok(deleted == 1)
    }

    /// The schedules of `ids`, with their due times; ids deleted meanwhile
    /// are left out.
    async fn read_schedules(&self, ids: Vec<String>) -> Result<Vec<ScheduleRecord>, EngineError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let replies: Vec<Row> = self
            .run(|| {
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("HMGET")
                        .arg(self.keys.schedule(id))
                        .arg("v")
                        .arg("d")
                        .cmd("ZSCORE")
                        .arg(self.keys.schedules_due())
                        .arg(id);
                }
                QueryKind::Pipe(pipe)
            })
            .await
            .and_then(|values: Vec<Value>| {
                values
                    .chunks(2)
                    .map(|pair| {
                        let (revision, body): (Option<u64>, Option<Vec<u8>>) =
                            redis::from_redis_value(pair[0].clone())
                                .map_err(EngineError::internal)?;
                        let due: Option<f64> = redis::from_redis_value(pair[1].clone())
                            .map_err(EngineError::internal)?;
                        Ok((revision, body, due))
                    })
                    .collect()
            })?;
        Ok(ids
            .into_iter()
            .zip(replies)
            .filter_map(|(id, (revision, body, due))| {
                Some(ScheduleRecord {
                    id,
                    revision: revision?,
                    due: due.map(|ms| layout::time_of_millis(ms as u64)),
                    body: body?.into(),
                })
            })
            .collect())
    }

    pub(super) async fn get_schedule(
        &self,
        id: &str,
    ) -> Result<Option<ScheduleRecord>, EngineError> {
        Ok(self.read_schedules(vec![id.to_owned()]).await?.pop())
    }

    pub(super) async fn list_schedules(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError> {
        // Lex ranges: past `after` (exclusive), within `prefix`.
        let start = if after.is_empty() || after < prefix {
            format!("[{prefix}")
        } else {
            format!("({after}")
        };
        let end = if prefix.is_empty() {
            "+".to_owned()
        } else {
            format!("[{prefix}\u{10ffff}")
        };
        let ids: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("ZRANGEBYLEX");
                cmd.arg(self.keys.schedule_ids())
                    .arg(&start)
                    .arg(&end)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
                QueryKind::Cmd(cmd)
            })
            .await?;
        self.read_schedules(ids).await
    }

    pub(super) async fn count_schedules(&self, prefix: &str) -> Result<u64, EngineError> {
        let (start, end) = if prefix.is_empty() {
            ("-".to_owned(), "+".to_owned())
        } else {
            (format!("[{prefix}"), format!("[{prefix}\u{10ffff}"))
        };
        self.run(|| {
            let mut cmd = redis::cmd("ZLEXCOUNT");
            cmd.arg(self.keys.schedule_ids()).arg(&start).arg(&end);
            QueryKind::Cmd(cmd)
        })
        .await
    }

    pub(super) async fn due_schedules(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError> {
        let ids: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(self.keys.schedules_due())
                    .arg("-inf")
                    .arg(layout::millis(now))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
                QueryKind::Cmd(cmd)
            })
            .await?;
        self.read_schedules(ids).await
    }
}
