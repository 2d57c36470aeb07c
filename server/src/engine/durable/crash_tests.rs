//! Crash consistency of the log in front of redb: one workload of appends
//! (tickets with payloads, updates, chunks, deletions, tombstones, pauses,
//! limits), with checkpoints every few groups, is run once to count the
//! disk operations it makes, then once for every operation with the disk
//! failing from that one on. After each crash the store is opened from
//! what the disk could hold (everything written; only what was synced; the
//! log's last write torn), and what it holds must be exactly the state
//! after some prefix of the appends that includes every acknowledged one:
//! nothing acknowledged is lost, nothing half-applied, nothing invented.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::entry::{CHUNKS, LIMITS, PAUSES, PAYLOADS, SCHEDULES, TICKETS, TOMBSTONES, Tables};
use super::simdisk::{SimDisk, Survives};
use super::*;
use crate::domain::ticket::Payload;
use crate::domain::{
    Chunk, NewTicket, QueueLimits, QueueName, QueuePause, Ticket, TicketId, TicketState,
};

/// A checkpoint every two or three groups.
const CHECKPOINTS: Checkpoints = Checkpoints {
    log_bytes: 1200,
    interval: Duration::from_secs(3600),
};

/// The appends of one run, in order, in groups committed together.
fn workload(seed: u64) -> Vec<Vec<Vec<Mutation>>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let queue = QueueName::parse("crash").unwrap();
    let mut live: Vec<Ticket> = Vec::new();
    let mut deleted: Vec<TicketId> = Vec::new();
    let mut groups = Vec::new();
    for _ in 0..24 {
        let mut group = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let choice = if live.is_empty() {
                0
            } else {
                rng.random_range(0..10)
            };
            let mutation = match choice {
                0..=2 => {
                    let body: Vec<u8> = (0..rng.random_range(16..160))
                        .map(|_| rng.random())
                        .collect();
                    let ticket = Ticket::create(
                        TicketId::new(),
                        NewTicket {
                            payload: Payload {
                                kind: Some(asyncgate_proto::v1::payload::Kind::Binary(
                                    Bytes::from(body),
                                )),
                                content_type: String::new(),
                            },
                            ..NewTicket::for_test(queue.clone())
                        },
                        SystemTime::UNIX_EPOCH
                            + Duration::from_secs(rng.random_range(1..1_000_000)),
                    );
                    live.push(ticket.clone());
                    Mutation::PutTicket {
                        ticket: Arc::new(ticket),
                        with_payload: true,
                    }
                }
                3 | 4 => {
                    let pick = rng.random_range(0..live.len());
                    let ticket = &mut live[pick];
                    ticket.attempt += 1;
                    ticket.state = if rng.random_bool(0.5) {
                        TicketState::Running
                    } else {
                        TicketState::Succeeded
                    };
                    Mutation::PutTicket {
                        ticket: Arc::new(ticket.clone()),
                        with_payload: false,
                    }
                }
                5 => {
                    let pick = rng.random_range(0..live.len());
                    let ticket = &mut live[pick];
                    ticket.seq += 1;
                    Mutation::PutChunk {
                        ticket_id: ticket.id,
                        chunk: Chunk {
                            seq: ticket.seq,
                            output: Payload::default(),
                        },
                    }
                }
                6 => {
                    let index = rng.random_range(0..live.len());
                    if rng.random_bool(0.3) {
                        Mutation::DeleteChunks {
                            ticket_id: live[index].id,
                        }
                    } else {
                        let ticket = live.swap_remove(index);
                        deleted.push(ticket.id);
                        Mutation::DeleteTicket {
                            ticket_id: ticket.id,
                            deleted_at: SystemTime::UNIX_EPOCH + Duration::from_secs(7),
                        }
                    }
                }
                7 if !deleted.is_empty() => Mutation::DeleteTombstone {
                    ticket_id: deleted.swap_remove(0),
                },
                7 => Mutation::PutQueueLimits {
                    queue: queue.clone(),
                    limits: QueueLimits {
                        max_dispatch_per_second: rng.random_range(0..100),
                        burst: 0,
                        max_concurrent: 3,
                    },
                },
                9 => schedule_mutation(&mut rng),
                _ => Mutation::PutQueuePause {
                    queue: queue.clone(),
                    pause: rng.random_bool(0.5).then(|| QueuePause {
                        by: "op".into(),
                        at: SystemTime::UNIX_EPOCH + Duration::from_secs(9),
                        reason: "crash test".into(),
                    }),
                },
            };
            group.push(vec![mutation]);
        }
        groups.push(group);
    }
    groups
}

/// A schedule written or deleted (three ids, so writes overwrite).
fn schedule_mutation(rng: &mut impl Rng) -> Mutation {
    let id = format!("schedule-{}", rng.random_range(0..3));
    if rng.random_bool(0.25) {
        return Mutation::DeleteSchedule { id };
    }
    Mutation::PutSchedule(crate::engine::ScheduleRecord {
        id,
        revision: rng.random_range(1..9),
        due: rng
            .random_bool(0.7)
            .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(rng.random_range(1..1_000_000))),
        body: (0..rng.random_range(8..64))
            .map(|_| rng.random::<u8>())
            .collect(),
    })
}

/// Every table's rows, comparable.
type Dump = BTreeMap<String, Vec<u8>>;

fn dump(database: &Database) -> Dump {
    let txn = database.begin_read().unwrap();
    let mut rows = Dump::new();
    for entry in txn.open_table(TICKETS).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.insert(format!("ticket {}", k.value()), v.value().to_vec());
    }
    for entry in txn.open_table(PAYLOADS).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.insert(format!("payload {}", k.value()), v.value().to_vec());
    }
    for entry in txn.open_table(CHUNKS).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.insert(format!("chunk {:?}", k.value()), v.value().to_vec());
    }
    for entry in txn.open_table(TOMBSTONES).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.insert(
            format!("tombstone {}", k.value()),
            v.value().to_le_bytes().to_vec(),
        );
    }
    for entry in txn.open_table(PAUSES).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.insert(format!("pause {}", k.value()), v.value().to_vec());
    }
    for entry in txn.open_table(LIMITS).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.insert(format!("limits {}", k.value()), v.value().to_vec());
    }
    for entry in txn.open_table(SCHEDULES).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.insert(format!("schedule {}", k.value()), v.value().to_vec());
    }
    rows
}

/// The expected contents after each prefix of the appends (index k: after
/// the first k), applied with no log at all.
fn prefixes(appends: &[Vec<Mutation>]) -> Vec<Dump> {
    let database = Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .unwrap();
    read::create_tables(&database).unwrap();
    let mut dumps = vec![dump(&database)];
    for append in appends {
        let txn = database.begin_write().unwrap();
        {
            let mut tables = Tables::open(&txn).unwrap();
            for mutation in append {
                tables.apply(&Entry::of(mutation)).unwrap();
            }
        }
        txn.commit().unwrap();
        dumps.push(dump(&database));
    }
    dumps
}

fn never_reopen() -> Reopen {
    Box::new(|| {
        Err(redb::Error::Io(std::io::Error::other(
            "no reopen in this test",
        )))
    })
}

fn start(disk: &SimDisk) -> Result<RedbJournal, OpenError> {
    let database = Database::builder()
        .create_with_backend(disk.database())
        .map_err(|e| OpenError::Database {
            path: "sim".into(),
            source: Box::new(e.into()),
        })?;
    let (journal, _, _) = open_journal(
        database,
        disk.log(),
        Path::new("sim"),
        never_reopen(),
        CHECKPOINTS,
    )?;
    Ok(journal)
}

/// Runs the workload on a store opened on `disk` until it ends or a write
/// fails, the disk failing from the `crash`th operation after the open on;
/// returns how many appends were acknowledged, how many were made, and how
/// many disk operations the run made after the open.
async fn run(disk: &SimDisk, groups: &[Vec<Vec<Mutation>>], crash: Option<u64>) -> (u64, u64, u64) {
    let journal = start(disk).expect("opens");
    let opened = disk.ops();
    if let Some(crash) = crash {
        disk.crash_after(crash);
    }
    let (mut acknowledged, mut made) = (0, 0);
    'groups: for group in groups {
        let mut last = 0;
        for append in group {
            last = journal.append(append.clone(), Vec::new());
            made += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), journal.durable(last)).await {
            Ok(Ok(())) => acknowledged = last,
            Ok(Err(_)) => break 'groups,
            Err(_) => panic!("a group neither committed nor failed"),
        }
    }
    journal.close();
    (acknowledged, made, disk.ops() - opened)
}

/// What a store opened from `disk` holds.
fn recovered(disk: &SimDisk) -> Dump {
    let journal = start(disk).expect("the store opens after the crash");
    let database = journal.reader.read().unwrap().clone().unwrap();
    let rows = dump(&database);
    drop(database);
    journal.close();
    rows
}

#[tokio::test]
async fn no_acknowledged_append_is_lost_at_any_crash_point() {
    let groups = workload(21);
    let appends: Vec<Vec<Mutation>> = groups.iter().flatten().cloned().collect();
    let expected = prefixes(&appends);
    // Without a crash every append lands; the run's disk operations are
    // the crash points.
    let clean = SimDisk::default();
    let (acknowledged, made, total) = run(&clean, &groups, None).await;
    assert_eq!(
        (acknowledged, made),
        (appends.len() as u64, appends.len() as u64)
    );
    assert_eq!(recovered(&clean), expected[appends.len()]);
    assert!(total > 60, "the workload made only {total} disk operations");
    let mut checked = 0;
    for crash in 1..=total + 1 {
        let disk = SimDisk::default();
        let (acknowledged, made, _) = run(&disk, &groups, Some(crash)).await;
        for survives in [Survives::Written, Survives::Synced, Survives::TornLog] {
            let (database, log) = disk.images(survives);
            let rows = recovered(&SimDisk::from_images(database, log));
            let matching = (acknowledged..=made).find(|k| expected[*k as usize] == rows);
            assert!(
                matching.is_some(),
                "crash at operation {crash} of {total} ({survives:?}): the store holds no state \
                 between the {acknowledged} acknowledged and the {made} made appends"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * (total + 1));
}
