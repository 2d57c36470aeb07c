//! Scale scenarios: a deep backlog and its drain, one ticket watched by
//! thousands of streams, and a queue shared by a thousand workers. Each phase
//! is bounded by its count and by `--time-limit`; what is done by then is
//! reported (with `completed: false`).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use asyncgate_client::pb;
use asyncgate_client::worker::TaskContext;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::args::{Mode, Settings};
use super::load::{ErrorKey, code_name, histogram, read_to_end, terminal_outcome, until_terminal};
use super::report::{bytes, round2};
use super::target::{Fleet, Gateway, OnTask, RssSource, connect, fresh_queue, gateway_client};

/// Submits per backlog slice (fewer when --tickets is small: a tenth).
const SLICE: u64 = 100_000;

/// What a scenario reports.
pub(crate) struct Scenario {
    pub(crate) json: Value,
    pub(crate) text: String,
    /// Every check passed (all submitted, drained, seen, ...).
    pub(crate) passed: bool,
}

/// Runs the scenario of `settings.mode` against `gateway`.
pub(crate) async fn run(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    match settings.mode {
        Mode::Backlog => backlog(settings, gateway).await,
        Mode::Fanout => fanout(settings, gateway).await,
        Mode::ManyWorkers => many_workers(settings, gateway).await,
        Mode::Queues => super::operate::queues(settings, gateway).await,
        Mode::RateLimit => super::operate::rate_limit(settings, gateway).await,
        Mode::Delayed => super::delayed::run(settings, gateway).await,
        Mode::Callbacks => super::callbacks::run(settings, gateway).await,
        other => anyhow::bail!("{} is not a scale scenario", other.name()),
    }
}

fn payload(settings: &Settings) -> Bytes {
    super::payload(settings.payload_size, settings.payload_kind)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn rate(count: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        round2(count as f64 / d.as_secs_f64())
    }
}

/// A counter crossing a slice boundary: when, and the RSS then.
#[derive(Debug, Clone, Copy)]
struct Mark {
    count: u64,
    at: Instant,
    rss: Option<u64>,
}

/// Marks, recorded by whoever makes the counter cross a boundary.
#[derive(Clone)]
pub(super) struct Marks {
    every: u64,
    rss: RssSource,
    marks: Arc<Mutex<Vec<Mark>>>,
}

impl Marks {
    fn new(every: u64, rss: RssSource) -> Marks {
        Marks {
            every: every.max(1),
            rss,
            marks: Arc::default(),
        }
    }

    /// Called with the counter's new value.
    fn count(&self, n: u64) {
        if n.is_multiple_of(self.every) {
            let mark = Mark {
                count: n,
                at: Instant::now(),
                rss: self.rss.read(),
            };
            self.marks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(mark);
        }
    }

    /// Per-slice rates from `start`, with a last partial slice up to
    /// `final_count` at `end` if it did not end on a boundary.
    fn slices(&self, start: Instant, final_count: u64, end: Instant) -> Vec<Value> {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        marks.sort_by_key(|m| m.count);
        if marks.last().is_none_or(|m| m.count < final_count) {
            marks.push(Mark {
                count: final_count,
                at: end,
                rss: self.rss.read(),
            });
        }
        let mut previous = (0, start);
        marks
            .iter()
            .map(|m| {
                let took = m.at.saturating_duration_since(previous.1);
                let slice = json!({
                    "upto": m.count,
                    "tickets": m.count - previous.0,
                    "seconds": secs(took),
                    "rate": rate(m.count - previous.0, took),
                    "elapsed_s": secs(m.at.saturating_duration_since(start)),
                    "rss_bytes": m.rss,
                });
                previous = (m.count, m.at);
                slice
            })
            .collect()
    }
}

/// Tickets seen by the workers, once each: a redelivered ticket (its lease
/// was lost, its result discarded) runs twice but counts once here.
#[derive(Clone, Default)]
struct Distinct {
    seen: Arc<Mutex<HashSet<u128>>>,
    count: Arc<AtomicU64>,
    /// Every task run, redeliveries included.
    runs: Arc<AtomicU64>,
}

impl Distinct {
    /// Records a task; returns the new distinct count if it is a first run.
    fn record(&self, task: &TaskContext) -> Option<u64> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let id = uuid::Uuid::parse_str(task.ticket_id())
            .map(|u| u.as_u128())
            .unwrap_or_default();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(id).then(|| {
            let n = seen.len() as u64;
            self.count.store(n, Ordering::Relaxed);
            n
        })
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

/// A progress line per second: `counter` out of `total`.
pub(super) fn ticker(
    settings: &Settings,
    label: String,
    counter: Arc<AtomicU64>,
    total: u64,
) -> Option<JoinHandle<()>> {
    settings.progress.then(|| {
        tokio::spawn(async move {
            let start = Instant::now();
            let mut ticks =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let mut last = 0;
            loop {
                let now = ticks.tick().await;
                let done = counter.load(Ordering::Relaxed);
                let elapsed = now.duration_since(start).as_secs_f64();
                eprintln!(
                    "{label}: {elapsed:>6.1}s  {done}/{total}  {:>8.0}/s (avg {:.0}/s)",
                    done.saturating_sub(last) as f64,
                    done as f64 / elapsed
                );
                last = done;
            }
        })
    })
}

pub(super) fn stop_ticker(ticker: Option<JoinHandle<()>>) {
    if let Some(ticker) = ticker {
        ticker.abort();
    }
}

/// The outcome of submitting many tickets.
pub(super) struct Submitted {
    pub(super) attempted: u64,
    pub(super) accepted: u64,
    pub(super) errors: BTreeMap<ErrorKey, u64>,
    pub(super) started: Instant,
    pub(super) ended: Instant,
    /// All `total` were attempted (not cut by the time limit).
    pub(super) completed: bool,
}

/// Makes the request of the n-th submit (from 0).
pub(super) type MakeRequest = Arc<dyn Fn(u64) -> pb::SubmitRequest + Send + Sync>;

/// Submits `total` copies of `request` from `concurrency` tasks over
/// `channels`, until done or `deadline`.
pub(super) async fn submit_many(
    settings: &Settings,
    label: String,
    channels: &[Channel],
    request: &pb::SubmitRequest,
    total: u64,
    marks: Option<&Marks>,
    deadline: Instant,
) -> Submitted {
    let request = request.clone();
    let make: MakeRequest = Arc::new(move |_| request.clone());
    submit_made(settings, label, channels, make, total, marks, deadline).await
}

/// Submits `total` requests made by `make` from `concurrency` tasks over
/// `channels`, until done or `deadline`.
pub(super) async fn submit_made(
    settings: &Settings,
    label: String,
    channels: &[Channel],
    make: MakeRequest,
    total: u64,
    marks: Option<&Marks>,
    deadline: Instant,
) -> Submitted {
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let progress = ticker(settings, label, accepted.clone(), total);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..settings.concurrency[0] {
        let mut client = gateway_client(&channels[index % channels.len()]);
        let make = make.clone();
        let next = next.clone();
        let accepted = accepted.clone();
        let marks = marks.cloned();
        let timeout = settings.request_timeout;
        tasks.spawn(async move {
            let mut errors: BTreeMap<ErrorKey, u64> = BTreeMap::new();
            let mut attempted = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= deadline || n >= total {
                    break;
                }
                attempted += 1;
                let outcome = tokio::time::timeout(timeout, client.submit(make(n))).await;
                match outcome {
                    Ok(Ok(_)) => {
                        let n = accepted.fetch_add(1, Ordering::Relaxed) + 1;
                        if let Some(marks) = &marks {
                            marks.count(n);
                        }
                    }
                    Ok(Err(status)) => {
                        *errors.entry(code_name(status.code())).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => *errors.entry("CLIENT_TIMEOUT").or_default() += 1,
                }
            }
            (attempted, errors)
        });
    }
    let mut attempted = 0;
    let mut errors = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((n, errs)) = joined {
            attempted += n;
            for (k, v) in errs {
                *errors.entry(k).or_default() += v;
            }
        }
    }
    let ended = Instant::now();
    stop_ticker(progress);
    Submitted {
        attempted,
        accepted: accepted.load(Ordering::Relaxed),
        errors,
        started,
        ended,
        completed: attempted >= total,
    }
}

impl Submitted {
    pub(super) fn json(&self, marks: Option<&Marks>) -> Value {
        let took = self.ended - self.started;
        let mut value = json!({
            "attempted": self.attempted,
            "accepted": self.accepted,
            "errors": self.errors,
            "seconds": secs(took),
            "rate": rate(self.accepted, took),
            "completed": self.completed,
        });
        if let Some(marks) = marks {
            value["slices"] = json!(marks.slices(self.started, self.accepted, self.ended));
        }
        value
    }
}

/// Waits until `counter` reaches `target` or `deadline`; returns when it
/// saw it reach the target (`None`: the deadline came first).
pub(super) async fn wait_for_count(
    counter: &AtomicU64,
    target: u64,
    deadline: Instant,
) -> Option<Instant> {
    loop {
        let now = Instant::now();
        if counter.load(Ordering::Relaxed) >= target {
            return Some(now);
        }
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the queue has no PENDING or RUNNING ticket, asked with
/// ListTickets (page size 1).
async fn queue_settled(channel: &Channel, queue: &str) -> anyhow::Result<bool> {
    let page = gateway_client(channel)
        .list_tickets(pb::ListTicketsRequest {
            queue: queue.to_owned(),
            states: vec![
                pb::TicketState::Pending as i32,
                pb::TicketState::Running as i32,
            ],
            page_size: 1,
            ..Default::default()
        })
        .await
        .context("ListTickets")?
        .into_inner();
    Ok(page.tickets.is_empty())
}

/// Asks [`queue_settled`] every 200 ms until it says yes or `deadline`;
/// returns when it did (`Ok(None)`: not by the deadline).
async fn wait_settled(
    channel: &Channel,
    queue: &str,
    deadline: Instant,
) -> anyhow::Result<Option<Instant>> {
    loop {
        if queue_settled(channel, queue).await? {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn slice_text(out: &mut String, slices: &Value) {
    for slice in slices.as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "    up to {:>9}: {:>8.3}s  {:>10.0}/s  rss {}",
            slice["upto"].as_u64().unwrap_or(0),
            slice["seconds"].as_f64().unwrap_or(0.0),
            slice["rate"].as_f64().unwrap_or(0.0),
            bytes(slice["rss_bytes"].as_u64()),
        );
    }
}

/// `--mode backlog`: N tickets with no worker, then the drain.
async fn backlog(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    let total = settings.tickets;
    let slice = SLICE.min(total.div_ceil(10)).max(1);
    let queue = fresh_queue("backlog");
    let request = super::target::submit_request(&queue, payload(settings));
    let channels = connect(&gateway.url, settings.connections).await?;
    let rss = gateway.rss;
    let rss_start = rss.read();

    let submit_marks = Marks::new(slice, rss);
    let label = format!("backlog submit [{}]", gateway.store);
    let deadline = Instant::now() + settings.time_limit;
    let submitted = submit_many(
        settings,
        label,
        &channels,
        &request,
        total,
        Some(&submit_marks),
        deadline,
    )
    .await;
    let rss_submitted = rss.read();

    // The drain: workers connect to a full queue.
    let target = submitted.accepted;
    let distinct = Distinct::default();
    let drain_marks = Marks::new(slice, rss);
    let on_task: OnTask = {
        let distinct = distinct.clone();
        let marks = drain_marks.clone();
        Arc::new(move |_, task| {
            let Some(n) = distinct.record(task) else {
                return;
            };
            marks.count(n);
            if n == target && !n.is_multiple_of(marks.every) {
                // The last one, so that the drain's end is exact.
                let mark = Mark {
                    count: n,
                    at: Instant::now(),
                    rss: marks.rss.read(),
                };
                marks
                    .marks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(mark);
            }
        })
    };
    let progress = ticker(
        settings,
        format!("backlog drain [{}]", gateway.store),
        distinct.count.clone(),
        target,
    );
    let drain_start = Instant::now();
    let drain_deadline = drain_start + settings.time_limit;
    let fleet = Fleet::start(
        &gateway.urls,
        &queue,
        settings.workers,
        settings.max_in_flight,
        Some(on_task),
        settings.time_limit,
    )
    .await;
    let fleet = match fleet {
        Ok(fleet) => fleet,
        Err(error) => {
            stop_ticker(progress);
            return Err(error);
        }
    };
    let connected_after = drain_start.elapsed();
    let seen_done = wait_for_count(&distinct.count, target, drain_deadline).await;
    stop_ticker(progress);
    let exact_end = drain_marks
        .marks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|m| m.count >= target)
        .map(|m| m.at)
        .min();
    let drain_end = exact_end.or(seen_done).unwrap_or_else(Instant::now);
    // Every ticket ran once; redelivered ones may still be running again.
    let settled = wait_settled(&channels[0], &queue, drain_deadline).await;
    let drained = seen_done.is_some() && matches!(settled, Ok(Some(_)));
    let distinct_count = distinct.count();
    let runs = distinct.runs();
    let rss_drained = rss.read();
    fleet.stop().await;
    drop(channels);

    let drain_took = drain_end.saturating_duration_since(drain_start);
    let (queue_empty, settled_s) = match &settled {
        Ok(Some(at)) => (
            json!(true),
            json!(secs(at.saturating_duration_since(drain_start))),
        ),
        Ok(None) => (json!(false), Value::Null),
        Err(_) => (Value::Null, Value::Null),
    };
    let json = json!({
        "mode": "backlog",
        "store": gateway.store,
        "tickets": total,
        "concurrency": settings.concurrency[0],
        "connections": settings.connections,
        "payload_size": settings.payload_size,
        "workers": settings.workers,
        "max_in_flight": settings.max_in_flight,
        "slice": slice,
        "submit": submitted.json(Some(&submit_marks)),
        "drain": {
            "tickets": target,
            "handled": distinct_count,
            "task_runs": runs,
            "redelivered": runs.saturating_sub(distinct_count),
            "workers_connected_s": secs(connected_after),
            "seconds": secs(drain_took),
            "rate": rate(distinct_count.min(target), drain_took),
            "completed": drained,
            "queue_empty": queue_empty,
            "all_terminal_after_s": settled_s,
            "slices": drain_marks.slices(drain_start, distinct_count.min(target), drain_end),
        },
        "rss_bytes_start": rss_start,
        "rss_bytes_after_submit": rss_submitted,
        "rss_bytes_after_drain": rss_drained,
        "rss_source": rss.label(),
    });
    let passed = submitted.completed && submitted.errors.is_empty() && drained;

    let mut text = String::new();
    let _ = writeln!(
        text,
        "backlog [{}]: {total} tickets of {} B, concurrency {}, {} connection(s)",
        gateway.store, settings.payload_size, settings.concurrency[0], settings.connections
    );
    let s = &json["submit"];
    let _ = writeln!(
        text,
        "  submit: {} accepted of {} attempted in {}s = {:.0}/s{}{}",
        s["accepted"],
        s["attempted"],
        s["seconds"],
        s["rate"].as_f64().unwrap_or(0.0),
        if submitted.completed {
            ""
        } else {
            "  (TIME LIMIT reached)"
        },
        if submitted.errors.is_empty() {
            String::new()
        } else {
            format!("  errors {:?}", submitted.errors)
        }
    );
    slice_text(&mut text, &s["slices"]);
    let d = &json["drain"];
    let _ = writeln!(
        text,
        "  drain ({} workers x {} in flight, connected after {}s): {} of {} in {}s = {:.0}/s; {} redelivered; no PENDING/RUNNING left: {} (after {}s){}",
        settings.workers,
        settings.max_in_flight,
        d["workers_connected_s"],
        d["handled"],
        target,
        d["seconds"],
        d["rate"].as_f64().unwrap_or(0.0),
        d["redelivered"],
        d["queue_empty"],
        d["all_terminal_after_s"],
        if drained {
            ""
        } else {
            "  (TIME LIMIT reached)"
        }
    );
    slice_text(&mut text, &d["slices"]);
    let _ = writeln!(
        text,
        "  rss: start {}, after submit {}, after drain {} ({})",
        bytes(rss_start),
        bytes(rss_submitted),
        bytes(rss_drained),
        rss.label().unwrap_or_else(|| "not measured".into())
    );
    Ok(Scenario { json, text, passed })
}

/// `--mode fanout`: many watchers on one ticket.
async fn fanout(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    let total = settings.watchers;
    let queue = fresh_queue("fanout");
    let request = super::target::submit_request(&queue, payload(settings));
    let channels = connect(&gateway.url, settings.connections).await?;
    let rss = gateway.rss;
    let ticket = gateway_client(&channels[0])
        .submit(request)
        .await
        .context("submitting the watched ticket")?
        .into_inner();
    let rss_before = rss.read();

    // Every watcher counts itself once its SNAPSHOT arrived (the gateway
    // subscribes before it sends it), then reads to the terminal event.
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = ticker(
        settings,
        format!("fanout open [{}]", gateway.store),
        opened.clone(),
        total as u64,
    );
    let open_start = Instant::now();
    let mut watchers = JoinSet::new();
    for index in 0..total {
        let mut client = gateway_client(&channels[index % channels.len()]);
        let request = pb::WatchTicketRequest {
            id: ticket.id.clone(),
            after_seq: None,
        };
        let opened = opened.clone();
        let failed = failed.clone();
        watchers.spawn(async move {
            let result = async {
                let mut stream = client
                    .watch_ticket(request)
                    .await
                    .map_err(|s| code_name(s.code()))?
                    .into_inner();
                // The first event is the SNAPSHOT: subscribed.
                match stream.message().await {
                    Ok(Some(event)) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        if let Some(outcome) = event
                            .ticket
                            .as_ref()
                            .and_then(|t| terminal_outcome(t.state()))
                        {
                            let at = Instant::now();
                            read_to_end(&mut stream).await;
                            return outcome.map(|()| at);
                        }
                    }
                    Ok(None) => return Err("STREAM_ENDED_EARLY"),
                    Err(status) => return Err(code_name(status.code())),
                }
                until_terminal(&mut stream).await
            }
            .await;
            if result.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            result
        });
    }
    let open_deadline = open_start + settings.time_limit;
    let all_open = loop {
        let settled = opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if settled >= total as u64 {
            break true;
        }
        if Instant::now() >= open_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let open_took = open_start.elapsed();
    stop_ticker(progress);
    let opened_count = opened.load(Ordering::Relaxed);
    // Let the allocator settle before reading the peak.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_open = rss.read();

    // Release the ticket: a worker runs it; note when its handler ran.
    let released: Arc<Mutex<Option<Instant>>> = Arc::default();
    let on_task: OnTask = {
        let released = released.clone();
        Arc::new(move |_, _| {
            released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(Instant::now);
        })
    };
    let workers_start = Instant::now();
    let fleet = Fleet::start(
        &gateway.urls,
        &queue,
        settings.workers,
        settings.max_in_flight,
        Some(on_task),
        settings.time_limit,
    )
    .await?;
    let watch_deadline = Instant::now() + settings.time_limit;
    let mut seen = 0u64;
    let mut errors: BTreeMap<ErrorKey, u64> = BTreeMap::new();
    let mut last: Option<Instant> = None;
    let mut arrivals = Vec::with_capacity(total);
    loop {
        match tokio::time::timeout_at(watch_deadline, watchers.join_next()).await {
            Ok(Some(Ok(Ok(at)))) => {
                seen += 1;
                last = Some(last.map_or(at, |l| l.max(at)));
                arrivals.push(at);
            }
            Ok(Some(Ok(Err(key)))) => *errors.entry(key).or_default() += 1,
            Ok(Some(Err(_))) => *errors.entry("TASK_FAILED").or_default() += 1,
            Ok(None) => break,
            Err(_) => {
                let left = watchers.len() as u64;
                *errors.entry("NOT_SEEN_IN_TIME").or_default() += left;
                watchers.abort_all();
                break;
            }
        }
    }
    let rss_after = rss.read();
    fleet.stop().await;
    drop(channels);

    let release = (*released.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(workers_start);
    let mut delivery = histogram();
    for at in &arrivals {
        let us =
            u64::try_from(at.saturating_duration_since(release).as_micros()).unwrap_or(u64::MAX);
        delivery.saturating_record(us.max(1));
    }
    let delivery_json = if delivery.is_empty() {
        json!({"p50": null, "p90": null, "p99": null, "max": null})
    } else {
        json!({
            "p50": delivery.value_at_quantile(0.5),
            "p90": delivery.value_at_quantile(0.9),
            "p99": delivery.value_at_quantile(0.99),
            "max": delivery.max(),
        })
    };
    let growth = match (rss_before, rss_open) {
        (Some(before), Some(open)) => Some(open as i64 - before as i64),
        _ => None,
    };
    let all_seen = seen == total as u64;
    let json = json!({
        "mode": "fanout",
        "store": gateway.store,
        "watchers": total,
        "connections": settings.connections,
        "payload_size": settings.payload_size,
        "workers": settings.workers,
        "opened": opened_count,
        "all_opened": all_open && opened_count == total as u64,
        "open_seconds": secs(open_took),
        "open_rate": rate(opened_count, open_took),
        "seen_terminal": seen,
        "total": total,
        "all_seen": all_seen,
        "errors": errors,
        "delivery_us": delivery_json,
        "last_watcher_after_release_us": last.map(|l| l.saturating_duration_since(release).as_micros() as u64),
        "rss_bytes_before": rss_before,
        "rss_bytes_with_watchers": rss_open,
        "rss_bytes_after": rss_after,
        "rss_growth_bytes": growth,
        "rss_growth_per_watcher_bytes": growth.map(|g| g / total as i64),
        "rss_source": rss.label(),
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "fanout [{}]: {total} WatchTicket streams on one ticket over {} connection(s)",
        gateway.store, settings.connections
    );
    let _ = writeln!(
        text,
        "  opened {opened_count}/{total} in {:.2}s ({:.0}/s)",
        open_took.as_secs_f64(),
        json["open_rate"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        text,
        "  rss: before {}, with watchers {} (growth {}, {} per watcher), after {} ({})",
        bytes(rss_before),
        bytes(rss_open),
        growth.map_or("-".into(), |g| format!("{:.1} MiB", g as f64 / 1048576.0)),
        growth.map_or("-".into(), |g| format!("{} B", g / total as i64)),
        bytes(rss_after),
        rss.label().unwrap_or_else(|| "not measured".into())
    );
    let _ = writeln!(
        text,
        "  terminal event seen by {seen}/{total} watchers{}",
        if errors.is_empty() {
            String::new()
        } else {
            format!("  errors {errors:?}")
        }
    );
    let d = &json["delivery_us"];
    let _ = writeln!(
        text,
        "  delivery after the worker ran (us): p50 {} p90 {} p99 {} max {}",
        d["p50"], d["p90"], d["p99"], d["max"]
    );
    Ok(Scenario {
        json,
        text,
        passed: all_seen,
    })
}

/// `--mode many-workers`: one queue, many single-slot workers.
async fn many_workers(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    let workers = settings.workers;
    let total = settings.tickets;
    let queue = fresh_queue("many-workers");
    let rss = gateway.rss;
    let rss_before = rss.read();
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
    let distinct = Distinct::default();
    let on_task: OnTask = {
        let counts = counts.clone();
        let distinct = distinct.clone();
        Arc::new(move |index, task| {
            counts[index].fetch_add(1, Ordering::Relaxed);
            distinct.record(task);
        })
    };
    let connect_start = Instant::now();
    let fleet = Fleet::start(
        &gateway.urls,
        &queue,
        workers,
        settings.max_in_flight,
        Some(on_task),
        settings.time_limit,
    )
    .await?;
    let connect_took = connect_start.elapsed();
    let rss_connected = rss.read();

    let result = async {
        let channels = connect(&gateway.url, settings.connections).await?;
        let request = super::target::submit_request(&queue, payload(settings));
        let deadline = Instant::now() + settings.time_limit;
        let submitted = submit_many(
            settings,
            format!("many-workers submit [{}]", gateway.store),
            &channels,
            &request,
            total,
            None,
            deadline,
        )
        .await;
        let progress = ticker(
            settings,
            format!("many-workers done [{}]", gateway.store),
            distinct.count.clone(),
            submitted.accepted,
        );
        let done_at = wait_for_count(
            &distinct.count,
            submitted.accepted,
            Instant::now() + settings.time_limit,
        )
        .await;
        stop_ticker(progress);
        Ok::<_, anyhow::Error>((submitted, done_at))
    }
    .await;
    let rss_after = rss.read();
    fleet.stop().await;
    let (submitted, done_at) = result?;

    let per_worker: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let max = per_worker.iter().copied().max().unwrap_or(0);
    let min = per_worker.iter().copied().min().unwrap_or(0);
    let sum: u64 = per_worker.iter().sum();
    let mean = sum as f64 / workers as f64;
    let variance = per_worker
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / workers as f64;
    let zero = per_worker.iter().filter(|&&c| c == 0).count();
    let spread = (min > 0).then(|| round2(max as f64 / min as f64));
    let end = done_at.unwrap_or_else(Instant::now);
    let took = end.saturating_duration_since(submitted.started);
    let all_done = done_at.is_some();
    let json = json!({
        "mode": "many-workers",
        "store": gateway.store,
        "workers": workers,
        "max_in_flight": settings.max_in_flight,
        "tickets": total,
        "concurrency": settings.concurrency[0],
        "connections": settings.connections,
        "payload_size": settings.payload_size,
        "workers_connect_seconds": secs(connect_took),
        "submit": submitted.json(None),
        "handled": distinct.count(),
        "task_runs": sum,
        "redelivered": sum.saturating_sub(distinct.count()),
        "all_done": all_done,
        "seconds": secs(took),
        "throughput": rate(distinct.count().min(submitted.accepted), took),
        "tasks_per_worker": {
            "max": max,
            "min": min,
            "mean": round2(mean),
            "stddev": round2(variance.sqrt()),
            "spread_ratio": spread,
            "workers_with_no_task": zero,
        },
        "rss_bytes_before": rss_before,
        "rss_bytes_workers_connected": rss_connected,
        "rss_bytes_after": rss_after,
        "rss_source": rss.label(),
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "many-workers [{}]: {workers} workers x {} in flight on one queue, {total} tickets, concurrency {}",
        gateway.store, settings.max_in_flight, settings.concurrency[0]
    );
    let _ = writeln!(
        text,
        "  workers connected in {:.2}s; rss {} -> {} with workers -> {} after",
        connect_took.as_secs_f64(),
        bytes(rss_before),
        bytes(rss_connected),
        bytes(rss_after)
    );
    let s = &json["submit"];
    let _ = writeln!(
        text,
        "  submitted {} of {} in {}s ({:.0}/s){}; all handled after {:.2}s: {} ({:.0}/s end to end)",
        s["accepted"],
        total,
        s["seconds"],
        s["rate"].as_f64().unwrap_or(0.0),
        if submitted.errors.is_empty() {
            String::new()
        } else {
            format!(" errors {:?}", submitted.errors)
        },
        took.as_secs_f64(),
        if all_done { "yes" } else { "NO (time limit)" },
        json["throughput"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        text,
        "  tasks per worker: max {max}, min {min}, mean {mean:.1}, stddev {:.1}, spread max/min {}, workers with no task {zero}, redelivered {}",
        variance.sqrt(),
        spread.map_or("inf".into(), |s| format!("{s:.2}")),
        json["redelivered"]
    );
    Ok(Scenario {
        json,
        text,
        passed: all_done && submitted.completed && submitted.errors.is_empty(),
    })
}
