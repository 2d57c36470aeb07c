//! The operator's commands: `asyncgate queues`, `asyncgate queue
//! show|pause|resume|purge|limits|target NAME`, `asyncgate retry ID | --queue Q` and
//! `asyncgate delete ID`, over `asyncgate.v1.Admin` (an admin key; a viewer
//! key for the reads).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use asyncgate_client::{Client, pb};
use clap::{ArgGroup, Args, Subcommand};

use crate::cli::{StateArg, parse_duration};
use crate::output::{Printer, table};

#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    #[command(subcommand)]
    pub(crate) action: QueueAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueueAction {
    /// Print a queue: counts per state, oldest pending ticket, workers,
    /// pause.
    Show {
        /// The queue.
        name: String,
    },
    /// Stop dispatch from a queue on every replica (submits are still
    /// accepted; running tickets finish); survives restarts.
    Pause {
        /// The queue.
        name: String,
        /// Why, shown in the waiting reason of its tickets.
        #[arg(long, default_value = "", value_name = "TEXT")]
        reason: String,
    },
    /// Let a paused queue dispatch again.
    Resume {
        /// The queue.
        name: String,
    },
    /// Cancel a queue's unfinished tickets (PENDING by default), each with
    /// a reason naming the purge.
    Purge(PurgeArgs),
    /// Set a queue's flow control over every worker and replica (0 or
    /// absent: unlimited).
    Limits {
        /// The queue.
        name: String,
        /// Leases per second.
        #[arg(long, default_value_t = 0, value_name = "N")]
        rate: u32,
        /// Leases allowed at once above the rate (default: one second's
        /// worth).
        #[arg(long, default_value_t = 0, value_name = "N")]
        burst: u32,
        /// Tickets running at once.
        #[arg(long, default_value_t = 0, value_name = "N")]
        concurrency: u32,
    },
    /// Have the gateways work a queue's tickets by calling an existing
    /// service: a unary gRPC method or an HTTP endpoint (POST). Its host
    /// must be in the gateways' --callback-allow list.
    #[command(group(ArgGroup::new("what").args(["target", "clear"]).required(true)))]
    Target {
        /// The queue.
        name: String,
        /// grpc(s)://HOST:PORT/package.Service/Method or
        /// http(s)://HOST:PORT/path, optionally
        /// ?max_concurrent=N&max_per_second=N&retry_on=CODES.
        target: Option<String>,
        /// Take the target off (its calls in flight finish).
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// The queue.
    pub(crate) name: String,

    /// Which states: pending and/or running (repeatable, or
    /// comma-separated; default pending).
    #[arg(
        long = "state",
        value_enum,
        value_delimiter = ',',
        value_name = "STATE"
    )]
    pub(crate) states: Vec<StateArg>,

    /// Only tickets older than this, e.g. 1h.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) older_than: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").args(["id", "queue"]).required(true)))]
pub(crate) struct RetryArgs {
    /// The ticket to run again (FAILED, CANCELLED or EXPIRED).
    #[arg(conflicts_with_all = ["queue", "states", "older_than"])]
    pub(crate) id: Option<String>,

    /// Instead of one ticket, every matching ticket of this queue.
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,

    /// With --queue, which states: failed, cancelled and/or expired
    /// (repeatable, or comma-separated; default failed).
    #[arg(
        long = "state",
        value_enum,
        value_delimiter = ',',
        value_name = "STATE",
        requires = "queue"
    )]
    pub(crate) states: Vec<StateArg>,

    /// With --queue, only tickets older than this, e.g. 1h.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "queue")]
    pub(crate) older_than: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The ticket (finished: cancel an unfinished one first).
    pub(crate) id: String,
}

/// `asyncgate retry`: one ticket (printed as `get` prints it), or a
/// queue's matching tickets (their count).
pub(crate) async fn retry(
    client: &Client,
    printer: &Printer,
    args: RetryArgs,
) -> anyhow::Result<ExitCode> {
    let admin = client.admin();
    match (args.id, args.queue) {
        (Some(id), _) => printer.ticket(&admin.retry_ticket(&id).await?)?,
        (None, Some(queue)) => {
            let states: Vec<pb::TicketState> = args.states.into_iter().map(Into::into).collect();
            let before = args.older_than.map(|age| SystemTime::now() - age);
            let retried = admin.retry_tickets(&queue, &states, before).await?;
            printer.message(&pb::RetryTicketsResponse { retried }, |r| {
                format!(
                    "retried {} ticket{} of queue {queue:?}",
                    r.retried,
                    if r.retried == 1 { "" } else { "s" },
                )
            })?;
        }
        // clap requires one of them.
        (None, None) => anyhow::bail!("name a ticket id or --queue"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `asyncgate delete ID`.
pub(crate) async fn delete(
    client: &Client,
    printer: &Printer,
    args: DeleteArgs,
) -> anyhow::Result<ExitCode> {
    let deleted_at = client.admin().delete_ticket(&args.id).await?;
    let response = pb::DeleteTicketResponse {
        deleted_at: Some(deleted_at.into()),
    };
    printer.message(&response, |r| {
        let at = r.deleted_at.map(|at| at.to_string()).unwrap_or_default();
        format!("deleted ticket {} at {at}", args.id)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `asyncgate queues`: every queue as a table.
pub(crate) async fn queues(client: &Client, printer: &Printer) -> anyhow::Result<ExitCode> {
    let queues = client.admin().list_queues().await?;
    let response = pb::ListQueuesResponse { queues };
    printer.message(&response, |response| {
        if response.queues.is_empty() {
            return "(no queues)".into();
        }
        let rows: Vec<Vec<String>> = response.queues.iter().map(queue_row).collect();
        table(
            &[
                "QUEUE",
                "PENDING",
                "RUNNING",
                "SUCCEEDED",
                "FAILED",
                "CANCELLED",
                "EXPIRED",
                "OLDEST",
                "WORKERS",
                "PAUSED",
            ],
            &rows,
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `asyncgate workers [--queue Q]`: connected workers as a table.
pub(crate) async fn workers(
    client: &Client,
    printer: &Printer,
    queue: Option<String>,
) -> anyhow::Result<ExitCode> {
    let workers = client.admin().list_workers(queue.as_deref()).await?;
    let response = pb::ListWorkersResponse {
        workers,
        ..Default::default()
    };
    printer.message(&response, |response| {
        if response.workers.is_empty() {
            return "(no workers)".into();
        }
        let now = SystemTime::now();
        let rows: Vec<Vec<String>> = response
            .workers
            .iter()
            .map(|w| {
                let ago = |at: Option<prost_types::Timestamp>| {
                    at.and_then(|at| SystemTime::try_from(at).ok())
                        .and_then(|at| now.duration_since(at).ok())
                        .map_or_else(|| "-".into(), |d| age_text(d.as_secs() as i64))
                };
                vec![
                    w.session_id.clone(),
                    w.worker_name.clone(),
                    w.queues.join(","),
                    format!("{}/{}", w.tickets.len(), w.max_in_flight),
                    ago(w.connected_at),
                    ago(w.last_heard_at),
                    if w.peer.is_empty() {
                        "-".into()
                    } else {
                        w.peer.clone()
                    },
                    if w.draining { "draining" } else { "serving" }.into(),
                ]
            })
            .collect();
        table(
            &[
                "SESSION", "NAME", "QUEUES", "HELD", "UP", "HEARD", "PEER", "STATE",
            ],
            &rows,
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `asyncgate drain SESSION`.
pub(crate) async fn drain(
    client: &Client,
    printer: &Printer,
    session_id: &str,
) -> anyhow::Result<ExitCode> {
    let worker = client.admin().drain_worker(session_id).await?;
    printer.message(&worker, |w| {
        format!(
            "draining worker {:?} (session {}): {} task{} in flight; it stops once they are done",
            w.worker_name,
            w.session_id,
            w.tickets.len(),
            if w.tickets.len() == 1 { "" } else { "s" }
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `asyncgate queue ACTION NAME`.
pub(crate) async fn queue(
    client: &Client,
    printer: &Printer,
    args: QueueArgs,
) -> anyhow::Result<ExitCode> {
    let admin = client.admin();
    match args.action {
        QueueAction::Show { name } => {
            printer.message(&admin.get_queue(&name).await?, queue_block)?
        }
        QueueAction::Pause { name, reason } => {
            printer.message(&admin.pause_queue(&name, &reason).await?, queue_block)?
        }
        QueueAction::Resume { name } => {
            printer.message(&admin.resume_queue(&name).await?, queue_block)?
        }
        QueueAction::Limits {
            name,
            rate,
            burst,
            concurrency,
        } => {
            let limits = pb::QueueLimits {
                max_dispatch_per_second: rate,
                burst,
                max_concurrent: concurrency,
            };
            printer.message(&admin.set_queue_limits(&name, limits).await?, queue_block)?
        }
        QueueAction::Target { name, target, .. } => {
            let target = target.unwrap_or_default();
            printer.message(&admin.set_queue_target(&name, &target).await?, queue_block)?
        }
        QueueAction::Purge(args) => {
            let states: Vec<pb::TicketState> = args.states.into_iter().map(Into::into).collect();
            let before = args.older_than.map(|age| SystemTime::now() - age);
            let cancelled = admin.purge_queue(&args.name, &states, before).await?;
            printer.message(&pb::PurgeQueueResponse { cancelled }, |r| {
                format!(
                    "cancelled {} ticket{} of queue {:?}",
                    r.cancelled,
                    if r.cancelled == 1 { "" } else { "s" },
                    args.name
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn queue_row(queue: &pb::QueueInfo) -> Vec<String> {
    let counts = queue.counts.unwrap_or_default();
    vec![
        queue.name.clone(),
        counts.pending.to_string(),
        counts.running.to_string(),
        counts.succeeded.to_string(),
        counts.failed.to_string(),
        counts.cancelled.to_string(),
        counts.expired.to_string(),
        queue
            .oldest_pending_age
            .map_or_else(|| "-".into(), |age| age_text(age.seconds)),
        queue.workers.to_string(),
        if queue.pause.is_some() { "yes" } else { "no" }.into(),
    ]
}

/// A queue as a block of `key: value` lines.
/// A queue's target on one line: where it comes from, and why this gateway
/// does not call it if it does not.
fn target_text(target: &pb::QueueTarget) -> String {
    let mut text = if target.from_config {
        format!("{} (from the gateway's config)", target.target)
    } else {
        format!("{} (set by {})", target.target, target.set_by)
    };
    if !target.problem.is_empty() {
        let _ = write!(text, "; not called: {}", target.problem);
    }
    text
}

fn queue_block(queue: &pb::QueueInfo) -> String {
    let counts = queue.counts.unwrap_or_default();
    let mut text = format!("queue: {}\n", queue.name);
    let _ = writeln!(
        text,
        "tickets: {} pending, {} running, {} succeeded, {} failed, {} cancelled, {} expired",
        counts.pending,
        counts.running,
        counts.succeeded,
        counts.failed,
        counts.cancelled,
        counts.expired
    );
    if let Some(age) = queue.oldest_pending_age {
        let _ = writeln!(text, "oldest pending: {} old", age_text(age.seconds));
    }
    let _ = writeln!(text, "workers: {}", queue.workers);
    if let Some(target) = &queue.target {
        let _ = writeln!(text, "target: {}", target_text(target));
    }
    let limits = queue.limits.unwrap_or_default();
    let limit = |value: u32, unit: &str| match value {
        0 => "unlimited".to_owned(),
        n => format!("{n}{unit}"),
    };
    let _ = writeln!(
        text,
        "limits: {} (burst {}), {} at once",
        limit(limits.max_dispatch_per_second, "/s"),
        limit(limits.burst, ""),
        limit(limits.max_concurrent, "")
    );
    if queue.held_back > 0 {
        let _ = writeln!(text, "held back by a limit: {}", queue.held_back);
    }
    for (label, window) in [
        ("last minute", &queue.last_minute),
        ("last 5 minutes", &queue.last_five_minutes),
    ] {
        let window = window.unwrap_or_default();
        let _ = writeln!(
            text,
            "{label}: {} succeeded, {} failed",
            window.succeeded, window.failed
        );
    }
    for (label, latency) in [
        ("queue wait", &queue.queue_wait),
        ("run time", &queue.run_time),
    ] {
        let _ = writeln!(
            text,
            "{label} (5 min): {}",
            latency.as_ref().map_or_else(|| "-".into(), latency_text)
        );
    }
    match &queue.pause {
        Some(pause) => {
            let since = pause.paused_at.map(|at| at.to_string()).unwrap_or_default();
            let _ = write!(text, "paused: by {:?} since {since}", pause.paused_by);
            if !pause.reason.is_empty() {
                let _ = write!(text, ": {}", pause.reason);
            }
        }
        None => text.push_str("paused: no"),
    }
    text
}

/// `p50 12.0ms, p95 48.5ms (310 measured)`, or `-` when none was.
fn latency_text(latency: &pb::LatencySummary) -> String {
    let text = |d: Option<prost_types::Duration>| {
        d.and_then(|d| std::time::Duration::try_from(d).ok())
            .map_or_else(|| "-".into(), short_duration)
    };
    if latency.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {}, p95 {} ({} measured)",
        text(latency.p50),
        text(latency.p95),
        latency.count
    )
}

/// `850µs`, `12.3ms`, `4.20s`, then as an age.
fn short_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    match secs {
        s if s < 0.001 => format!("{}µs", d.as_micros()),
        s if s < 1.0 => format!("{:.1}ms", s * 1000.0),
        s if s < 60.0 => format!("{s:.2}s"),
        _ => age_text(d.as_secs() as i64),
    }
}

/// `42s`, `5m3s`, `2h10m`, `3d4h`: an age at a glance.
fn age_text(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age_text(0), "0s");
        assert_eq!(age_text(303), "5m3s");
        assert_eq!(age_text(7800), "2h10m");
        assert_eq!(age_text(273_600), "3d4h");
    }

    #[test]
    fn tables_align_names_left_and_numbers_right() {
        let text = table(
            &["QUEUE", "PENDING"],
            &[
                vec!["emails".into(), "7".into()],
                vec!["a".into(), "1200".into()],
            ],
        );
        assert_eq!(text, "QUEUE   PENDING\nemails        7\na          1200");
    }
}
