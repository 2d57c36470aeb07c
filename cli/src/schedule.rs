//! `asyncgate schedule create|list|show|pause|resume|trigger|backfill|delete`:
//! schedules (`asyncgate.v1.Schedules`) from the command line.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use asyncgate_client::convert::{duration_to_proto, timestamp_to_system_time};
use asyncgate_client::{Client, Submit, pb};
use clap::{Args, Subcommand, ValueEnum};

use crate::cli::{parse_duration, parse_json, parse_key_value, parse_time};
use crate::output::{Printer, state_name, table, ticket_line};

#[derive(Debug, Args)]
pub(crate) struct ScheduleArgs {
    #[command(subcommand)]
    pub(crate) action: ScheduleAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleAction {
    /// Create a schedule: the gateway submits a ticket at each slot.
    Create(Box<CreateArgs>),
    /// List the schedules this key sees.
    List,
    /// Print a schedule: spec, ticket, recent runs and next fire times.
    Show {
        /// The schedule id.
        id: String,
    },
    /// Stop a schedule firing until it is resumed.
    Pause {
        /// The schedule id.
        id: String,
        /// Shown with the schedule.
        #[arg(long, default_value = "", value_name = "TEXT")]
        note: String,
    },
    /// Let a paused schedule fire again, from its next slot.
    Resume {
        /// The schedule id.
        id: String,
    },
    /// Submit one run now and print its ticket.
    Trigger {
        /// The schedule id.
        id: String,
    },
    /// Submit every slot between two times (one ticket per slot, never two).
    Backfill {
        /// The schedule id.
        id: String,
        /// The first slot's earliest time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        from: SystemTime,
        /// The last slot's latest time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        to: SystemTime,
    },
    /// Delete a schedule (its tickets stay).
    Delete {
        /// The schedule id.
        id: String,
    },
}

/// See [`CreateArgs::overlap`].
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Overlap {
    Allow,
    Skip,
    BufferOne,
    CancelPrevious,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("when").args(["cron", "every"]).required(true)))]
pub(crate) struct CreateArgs {
    /// The schedule id.
    pub(crate) id: String,
    /// A cron expression: five fields (minute hour day-of-month month
    /// day-of-week) or six with seconds first, e.g. "0 3 * * MON-FRI".
    #[arg(long, value_name = "EXPR")]
    pub(crate) cron: Option<String>,
    /// A fixed interval instead, e.g. 15m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) every: Option<Duration>,
    /// The IANA time zone the cron expression is read in (default UTC).
    #[arg(long, value_name = "ZONE", default_value = "")]
    pub(crate) tz: String,
    /// No slot before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) start: Option<SystemTime>,
    /// No slot after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) end: Option<SystemTime>,
    /// Each ticket waits up to this long after its slot (spreads load).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) jitter: Option<Duration>,
    /// What a slot does while the previous run has not finished.
    #[arg(long, value_enum, default_value = "skip")]
    pub(crate) overlap: Overlap,
    /// Slots missed while no gateway ran still run when at most this late
    /// (default 1m).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) catchup_window: Option<Duration>,
    /// The queue each ticket goes to.
    #[arg(long)]
    pub(crate) queue: String,
    /// The payload as JSON text.
    #[arg(long, value_name = "JSON", value_parser = parse_json, conflicts_with = "data")]
    pub(crate) json: Option<serde_json::Value>,
    /// The payload as text.
    #[arg(long, value_name = "TEXT")]
    pub(crate) data: Option<String>,
    /// Higher runs first (-1000 to 1000).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i32,
    /// Metadata entries of each ticket (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) metadata: Vec<(String, String)>,
    /// Each ticket's whole budget, counted from its slot.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Attempts before a ticket fails (default: the gateway's).
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,
}

impl CreateArgs {
    fn schedule(self) -> pb::Schedule {
        let mut ticket = Submit::new(self.queue).priority(self.priority);
        if let Some(value) = self.json {
            ticket = ticket.json(value);
        } else if let Some(text) = self.data {
            ticket = ticket.text(text);
        }
        for (key, value) in self.metadata {
            ticket = ticket.metadata(key, value);
        }
        if let Some(timeout) = self.timeout {
            ticket = ticket.timeout(timeout);
        }
        if let Some(attempts) = self.max_attempts {
            ticket = ticket.max_attempts(attempts);
        }
        let every = match (self.cron, self.every) {
            (Some(cron), _) => pb::schedule_spec::Every::Cron(cron),
            (None, every) => {
                pb::schedule_spec::Every::Interval(duration_to_proto(every.unwrap_or_default()))
            }
        };
        pb::Schedule {
            id: self.id,
            spec: Some(pb::ScheduleSpec {
                every: Some(every),
                time_zone: self.tz,
                start_at: self.start.map(Into::into),
                end_at: self.end.map(Into::into),
            }),
            ticket: Some(ticket.build()),
            jitter: self.jitter.map(duration_to_proto),
            overlap_policy: match self.overlap {
                Overlap::Allow => pb::OverlapPolicy::Allow,
                Overlap::Skip => pb::OverlapPolicy::Skip,
                Overlap::BufferOne => pb::OverlapPolicy::BufferOne,
                Overlap::CancelPrevious => pb::OverlapPolicy::CancelPrevious,
            } as i32,
            catchup_window: self.catchup_window.map(duration_to_proto),
            ..Default::default()
        }
    }
}

fn time_text(t: &prost_types::Timestamp) -> String {
    humantime::format_rfc3339_seconds(timestamp_to_system_time(t)).to_string()
}

fn spec_text(spec: Option<&pb::ScheduleSpec>) -> String {
    let Some(spec) = spec else {
        return String::new();
    };
    let every = match &spec.every {
        Some(pb::schedule_spec::Every::Cron(cron)) => format!("cron {cron:?}"),
        Some(pb::schedule_spec::Every::Interval(d)) => format!(
            "every {}",
            humantime::format_duration(Duration::try_from(*d).unwrap_or_default())
        ),
        None => "-".into(),
    };
    if spec.time_zone.is_empty() || spec.time_zone == "UTC" {
        every
    } else {
        format!("{every} in {}", spec.time_zone)
    }
}

fn schedule_row(s: &pb::Schedule) -> Vec<String> {
    vec![
        s.id.clone(),
        spec_text(s.spec.as_ref()),
        s.ticket
            .as_ref()
            .map(|t| t.queue.clone())
            .unwrap_or_default(),
        s.next_fire_times.first().map_or("-".into(), time_text),
        s.fired.to_string(),
        s.skipped.to_string(),
        if s.paused { "yes".into() } else { "".into() },
    ]
}

/// A schedule for people: what, when, and what happened.
fn schedule_block(s: &pb::Schedule) -> String {
    let mut text = format!(
        "schedule {}\n  spec      {}\n  queue     {}\n  overlap   {}\n  fired     {} (skipped {})\n",
        s.id,
        spec_text(s.spec.as_ref()),
        s.ticket.as_ref().map(|t| t.queue.as_str()).unwrap_or(""),
        pb::OverlapPolicy::try_from(s.overlap_policy).map_or("?", |p| p
            .as_str_name()
            .trim_start_matches("OVERLAP_POLICY_")),
        s.fired,
        s.skipped,
    );
    if s.paused {
        text.push_str(&format!("  paused    {}\n", s.pause_note));
    }
    if !s.next_fire_times.is_empty() {
        let next: Vec<String> = s.next_fire_times.iter().map(time_text).collect();
        text.push_str(&format!("  next      {}\n", next.join(", ")));
    }
    if !s.recent_runs.is_empty() {
        let rows: Vec<Vec<String>> = s
            .recent_runs
            .iter()
            .map(|run| {
                vec![
                    run.fire_time.as_ref().map_or("-".into(), time_text),
                    if run.ticket_id.is_empty() {
                        "-".into()
                    } else {
                        run.ticket_id.clone()
                    },
                    if run.ticket_id.is_empty() {
                        "SKIPPED".into()
                    } else {
                        pb::TicketState::try_from(run.state)
                            .map_or("?", state_name)
                            .to_owned()
                    },
                    if run.manual {
                        "manual".into()
                    } else {
                        run.skipped.clone()
                    },
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(&["SLOT", "TICKET", "STATE", "NOTE"], &rows));
    }
    text
}

/// Runs one `asyncgate schedule` action.
pub(crate) async fn schedule(
    client: &Client,
    printer: &Printer,
    args: ScheduleArgs,
) -> anyhow::Result<ExitCode> {
    let schedules = client.schedules();
    match args.action {
        ScheduleAction::Create(args) => {
            printer.message(&schedules.create(args.schedule()).await?, schedule_block)?
        }
        ScheduleAction::List => {
            let response = pb::ListSchedulesResponse {
                schedules: schedules.list().await?,
                next_page_token: String::new(),
            };
            printer.message(&response, |r| {
                if r.schedules.is_empty() {
                    return "(no schedules)".into();
                }
                let rows: Vec<Vec<String>> = r.schedules.iter().map(schedule_row).collect();
                table(
                    &[
                        "SCHEDULE", "SPEC", "QUEUE", "NEXT", "FIRED", "SKIPPED", "PAUSED",
                    ],
                    &rows,
                )
            })?
        }
        ScheduleAction::Show { id } => {
            printer.message(&schedules.get(&id).await?, schedule_block)?
        }
        ScheduleAction::Pause { id, note } => {
            printer.message(&schedules.pause(&id, &note).await?, schedule_block)?
        }
        ScheduleAction::Resume { id } => {
            printer.message(&schedules.resume(&id).await?, schedule_block)?
        }
        ScheduleAction::Trigger { id } => printer.ticket(&schedules.trigger(&id).await?)?,
        ScheduleAction::Backfill { id, from, to } => {
            let response = pb::BackfillScheduleResponse {
                tickets: schedules.backfill(&id, from, to).await?,
            };
            printer.message(&response, |r| {
                r.tickets
                    .iter()
                    .map(ticket_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            })?
        }
        ScheduleAction::Delete { id } => {
            schedules.delete(&id).await?;
            printer.message(&pb::DeleteScheduleResponse {}, |_| {
                format!("deleted schedule {id:?}")
            })?
        }
    }
    Ok(ExitCode::SUCCESS)
}
