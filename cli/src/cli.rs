//! The command line: clap definitions and the small value parsers they use
//! (durations, sizes, `key=value`, JSON text, ticket states).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use asyncgate_client::pb;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// The help heading of the flags every subcommand takes, so that each
/// subcommand's help lists its own flags first and these apart, after them.
const GLOBAL_OPTIONS: &str = "Global options";

/// Submit, follow and serve Asyncgate tickets.
///
/// Exit codes: 0 on success (a SUCCEEDED ticket, or a ticket that is not
/// terminal yet); 1 when the ticket ended FAILED, CANCELLED or EXPIRED (or a
/// line of `submit --batch` was refused); 2 on usage, connection and
/// gateway errors.
#[derive(Debug, Parser)]
#[command(name = "asyncgate", version)]
pub(crate) struct Cli {
    /// The gateway's address.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL_OPTIONS,
        env = "ASYNCGATE_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub(crate) server: String,

    /// API key sent as `authorization: Bearer <key>` (prefer the variable:
    /// command lines are visible to other users of the machine).
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL_OPTIONS,
        env = "ASYNCGATE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub(crate) api_key: Option<String>,

    /// CA certificate (PEM) that signed an `https://` gateway's certificate,
    /// when the system roots do not cover it.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL_OPTIONS,
        env = "ASYNCGATE_CA_CERT",
        value_name = "PEM"
    )]
    pub(crate) ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) for a gateway that requires one (mutual TLS).
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL_OPTIONS,
        env = "ASYNCGATE_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,

    /// Key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL_OPTIONS,
        env = "ASYNCGATE_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,

    /// Compress requests (and ask for compressed replies) with `gzip` or
    /// `zstd`: worth it for large, compressible payloads on slow links.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL_OPTIONS,
        env = "ASYNCGATE_COMPRESSION",
        value_enum
    )]
    pub(crate) compression: Option<Compression>,

    /// How to print tickets and events: `text` for people; `json` for the
    /// proto3 JSON mapping (as grpcurl prints it), one document per line.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL_OPTIONS,
        value_enum,
        default_value_t = OutputFormat::Text
    )]
    pub(crate) output: OutputFormat,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// See [`Cli::compression`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Compression {
    Gzip,
    Zstd,
}

impl From<Compression> for asyncgate_client::CompressionEncoding {
    fn from(compression: Compression) -> Self {
        match compression {
            Compression::Gzip => asyncgate_client::CompressionEncoding::Gzip,
            Compression::Zstd => asyncgate_client::CompressionEncoding::Zstd,
        }
    }
}

/// See [`Cli::output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Submit a request to a queue and print its ticket (or wait for it).
    Submit(SubmitArgs),
    /// Print a ticket, optionally waiting until it is terminal.
    Get(GetArgs),
    /// Print a ticket's events until it is terminal.
    Watch(WatchArgs),
    /// Cancel a ticket.
    Cancel(CancelArgs),
    /// List tickets in creation order (oldest first, or --newest-first),
    /// filtered by queue, state, metadata and creation time.
    List(ListArgs),
    /// List every queue: tickets per state, oldest pending, workers, pause
    /// (an admin or viewer key).
    Queues,
    /// Show, pause, resume or purge one queue (an admin key; a viewer key
    /// may show).
    Queue(crate::admin::QueueArgs),
    /// List connected workers on every replica: queues, tasks held,
    /// address, state (an admin or viewer key).
    Workers {
        /// Only the workers serving this queue.
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
    },
    /// Drain a worker: it gets no new task, finishes what it holds and
    /// stops (an admin key).
    Drain {
        /// Its session id (see `asyncgate workers`).
        session: String,
    },
    /// Run a FAILED, CANCELLED or EXPIRED ticket again: PENDING, the same
    /// id, a fresh attempt budget (an admin key). With --queue, every
    /// matching ticket of the queue.
    Retry(crate::admin::RetryArgs),
    /// Delete a finished ticket now; later lookups say it was deleted (an
    /// admin key).
    Delete(crate::admin::DeleteArgs),
    /// Check that the gateway serves (grpc.health.v1; needs no API key).
    ///
    /// Prints SERVING or NOT_SERVING and exits 0 or 1 (2 if the gateway
    /// cannot be reached): a health check for compose or a script. The
    /// gateway is NOT_SERVING while its store fails and while it shuts down.
    Health(HealthArgs),
    /// Serve queues by running a command once per task.
    ///
    /// The payload goes to the command's stdin: a JSON string as its raw
    /// text (no quotes, no newline added), any other JSON value as compact
    /// JSON text, a binary payload as its bytes. Its stdout becomes the
    /// result: JSON if it parses as JSON (after trimming whitespace);
    /// otherwise, when the input was a JSON string and the output is UTF-8,
    /// a JSON string (one trailing newline removed), so `tr a-z A-Z` turns
    /// "hello" into "HELLO"; otherwise a binary result, `text/plain;
    /// charset=utf-8` if UTF-8, else `application/octet-stream`. A non-zero
    /// exit is a retryable failure (code UNKNOWN) whose message is the last
    /// 1 KiB of stderr and the exit status. A cancelled task's command is
    /// killed. The environment carries ASYNCGATE_TICKET_ID,
    /// ASYNCGATE_LEASE_ID, ASYNCGATE_QUEUE, ASYNCGATE_ATTEMPT,
    /// ASYNCGATE_MAX_ATTEMPTS and ASYNCGATE_CONTENT_TYPE.
    ///
    /// Runs until SIGINT or SIGTERM, then drains (finishes and delivers
    /// in-flight tasks); a second signal stops at once.
    Work(WorkArgs),
    /// Create, list, show, pause, resume, trigger, backfill or delete a
    /// schedule: tickets the gateway submits itself on a cron expression or
    /// an interval (a client or admin key; a viewer key may list and show).
    Schedule(crate::schedule::ScheduleArgs),
    /// Measure a gateway's throughput, latency and memory.
    #[command(long_about = crate::bench::LONG_ABOUT)]
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// One service's health (e.g. asyncgate.v1.Workers) instead of the
    /// whole gateway's.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub(crate) service: String,
}

#[derive(Debug, Args)]
// A body is required: a forgotten flag must not send an empty request (a
// batch's lines carry their own).
#[command(group(ArgGroup::new("body").args(["json", "file", "data", "empty", "batch"]).required(true)))]
pub(crate) struct SubmitArgs {
    /// The queue to submit to.
    #[arg(required_unless_present = "batch")]
    pub(crate) queue: Option<String>,

    /// Submit many requests: one per line of FILE ("-" for stdin), each a
    /// SubmitRequest in proto3 JSON, e.g. {"queue": "q", "payload":
    /// {"json": "hi"}, "priority": 5} (blank lines skipped). Sent in
    /// SubmitBatch calls of up to 1000; prints one line per request, in
    /// order: its ticket, or {"line", "code", "message"} when it was
    /// refused or is not a request (the others go on). Exits 1 if any line
    /// was refused.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "queue", "priority", "idempotency_key", "metadata", "timeout",
            "attempt_timeout", "max_attempts", "delay", "at", "wait", "watch",
            "callback",
        ]
    )]
    pub(crate) batch: Option<PathBuf>,

    /// The payload as JSON text, e.g. '"hello"' or '{"n": 1}'.
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    pub(crate) json: Option<serde_json::Value>,

    /// The payload as the bytes of a file ("-" for stdin), sent as binary
    /// `application/octet-stream` even if it holds JSON (use --json for a
    /// JSON payload).
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,

    /// The payload as text, sent as binary `text/plain; charset=utf-8`.
    #[arg(long, value_name = "TEXT")]
    pub(crate) data: Option<String>,

    /// Send no payload at all (one of --json, --file, --data or --empty is
    /// required).
    #[arg(long)]
    pub(crate) empty: bool,

    /// Higher runs first (-1000 to 1000).
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub(crate) priority: i32,

    /// A repeat of the key returns the original ticket.
    #[arg(long, value_name = "KEY")]
    pub(crate) idempotency_key: Option<String>,

    /// Metadata entries (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) metadata: Vec<(String, String)>,

    /// The whole budget, e.g. 30s; past it the ticket is EXPIRED.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,

    /// One attempt's budget, e.g. 1.5s; past it the attempt fails.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) attempt_timeout: Option<Duration>,

    /// Attempts before the ticket fails (default: the gateway's).
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,

    /// Run no sooner than DUR from now, e.g. 10m: the ticket is stored now
    /// and waits PENDING (scheduled) until then.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, conflicts_with = "at")]
    pub(crate) delay: Option<Duration>,

    /// Run no sooner than this time, RFC 3339 (2026-12-24T18:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) at: Option<std::time::SystemTime>,

    /// Deliver the terminal ticket here when it ends: https://HOST/PATH (a
    /// signed POST) or grpc(s)://HOST:PORT; the gateway must allow it
    /// (--callback-allow).
    #[arg(long, value_name = "URL")]
    pub(crate) callback: Option<String>,

    /// Wait until the ticket is terminal and print it, long-polling DUR per
    /// request (default 50s). Put it last or write --wait=DUR.
    #[arg(
        long,
        value_name = "DUR",
        num_args = 0..=1,
        default_missing_value = "50s",
        value_parser = parse_duration,
        conflicts_with = "watch"
    )]
    pub(crate) wait: Option<Duration>,

    /// Print the ticket's events until it is terminal (submits with Execute).
    #[arg(long)]
    pub(crate) watch: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The ticket id.
    pub(crate) id: String,

    /// Wait until the ticket is terminal, long-polling DUR per request
    /// (default 50s). Put it last or write --wait=DUR.
    #[arg(
        long,
        value_name = "DUR",
        num_args = 0..=1,
        default_missing_value = "50s",
        value_parser = parse_duration
    )]
    pub(crate) wait: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The ticket id.
    pub(crate) id: String,

    /// Replay the partial output after this seq (the highest you processed).
    #[arg(long, value_name = "N")]
    pub(crate) after_seq: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The ticket id.
    pub(crate) id: String,

    /// Recorded in the ticket's error message.
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub(crate) reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this queue.
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,

    /// Only these states (repeatable, or comma-separated).
    #[arg(
        long = "state",
        value_enum,
        value_delimiter = ',',
        value_name = "STATE"
    )]
    pub(crate) states: Vec<StateArg>,

    /// Only tickets whose completion callback is in these states, e.g.
    /// gave-up: the deliveries given up (repeatable, or comma-separated).
    #[arg(
        long = "callback-state",
        value_enum,
        value_delimiter = ',',
        value_name = "STATE"
    )]
    pub(crate) callback_states: Vec<CallbackStateArg>,

    /// Tickets per page, 1 to 1000 (default: the gateway's, 100).
    #[arg(long, value_name = "N")]
    pub(crate) page_size: Option<u32>,

    /// Continue from a previous page's next_page_token (with the same
    /// --newest-first).
    #[arg(long, value_name = "TOKEN")]
    pub(crate) page_token: Option<String>,

    /// Only tickets whose metadata has this entry (repeatable, up to 16;
    /// every one must match).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) metadata: Vec<(String, String)>,

    /// Only tickets created within DUR before now, e.g. 1h or 15m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) since: Option<Duration>,

    /// Only tickets created before this RFC 3339 time, e.g.
    /// 2025-01-31T12:00:00Z.
    #[arg(long, value_name = "RFC3339", value_parser = parse_timestamp)]
    pub(crate) before: Option<prost_types::Timestamp>,

    /// Newest first (default: oldest first).
    #[arg(long)]
    pub(crate) newest_first: bool,
}

impl ListArgs {
    /// The ListTickets request these flags ask for, `--since` counted back
    /// from `now`.
    pub(crate) fn request(self, now: SystemTime) -> pb::ListTicketsRequest {
        pb::ListTicketsRequest {
            queue: self.queue.unwrap_or_default(),
            states: self
                .states
                .into_iter()
                .map(|s| pb::TicketState::from(s) as i32)
                .collect(),
            page_size: self.page_size.unwrap_or(0),
            page_token: self.page_token.unwrap_or_default(),
            metadata: self.metadata.into_iter().collect(),
            created_after: self
                .since
                .map(|since| now.checked_sub(since).unwrap_or(UNIX_EPOCH).into()),
            created_before: self.before,
            newest_first: self.newest_first,
            callback_states: self
                .callback_states
                .into_iter()
                .map(|s| pb::CallbackState::from(s) as i32)
                .collect(),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct WorkArgs {
    /// A queue to serve (repeatable).
    #[arg(long = "queue", required = true, value_name = "QUEUE")]
    pub(crate) queues: Vec<String>,

    /// Tasks run at once (1 to 10000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    pub(crate) concurrency: u32,

    /// The worker's name in the gateway's logs (default: host-pid).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// The command to run per task, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

/// A ticket state as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StateArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl From<StateArg> for pb::TicketState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Pending => pb::TicketState::Pending,
            StateArg::Running => pb::TicketState::Running,
            StateArg::Succeeded => pb::TicketState::Succeeded,
            StateArg::Failed => pb::TicketState::Failed,
            StateArg::Cancelled => pb::TicketState::Cancelled,
            StateArg::Expired => pb::TicketState::Expired,
        }
    }
}

/// A callback delivery state as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CallbackStateArg {
    Waiting,
    Pending,
    Delivered,
    GaveUp,
}

impl From<CallbackStateArg> for pb::CallbackState {
    fn from(state: CallbackStateArg) -> Self {
        match state {
            CallbackStateArg::Waiting => pb::CallbackState::Waiting,
            CallbackStateArg::Pending => pb::CallbackState::Pending,
            CallbackStateArg::Delivered => pb::CallbackState::Delivered,
            CallbackStateArg::GaveUp => pb::CallbackState::GaveUp,
        }
    }
}

/// "1.5s", "300ms", "2m", "1h", "1m30s": the gateway's canonical form (a
/// unit is required; `asyncgate-server` reads its duration flags the same
/// way, and refuses the same lenient spellings such as "5 seconds").
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    asyncgate_server::config::parse_duration(text)
}

/// A size: bytes, or a number and a unit ("64KiB", "1 MB"); the gateway's
/// own rules (`asyncgate-server` reads its size flags the same way).
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    asyncgate_server::config::parse_size_usize(text)
}

/// An RFC 3339 time ("2026-12-24T18:00:00Z", "2026-12-24T18:00:00+01:00").
pub(crate) fn parse_time(text: &str) -> Result<std::time::SystemTime, String> {
    std::time::SystemTime::try_from(parse_timestamp(text)?)
        .map_err(|_| format!("{text:?} is out of range"))
}

pub(crate) fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// An RFC 3339 time ("2025-01-31T12:00:00Z", "2025-01-31T14:00:00+02:00").
fn parse_timestamp(text: &str) -> Result<prost_types::Timestamp, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an RFC 3339 time; use e.g. 2025-01-31T12:00:00Z"))
}

pub(crate) fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|err| format!("not valid JSON: {err}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).ok();
        assert_eq!(ok("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(ok("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(ok("2m"), Some(Duration::from_secs(120)));
        assert_eq!(ok("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(ok("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(ok(" 50s "), Some(Duration::from_secs(50)));
        assert_eq!(ok("10"), None);
        assert_eq!(ok("soon"), None);
        assert_eq!(ok(""), None);
        assert_eq!(ok("5 seconds"), None, "canonical forms only");
        assert_eq!(ok("1M"), None, "humantime's month is refused");
    }

    #[test]
    fn key_values() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("asyncgate").chain(args.iter().copied()))
    }

    #[test]
    fn submit_flags() -> Result<(), clap::Error> {
        let cli = parse(&[
            "submit",
            "upper",
            "--json",
            r#""hi""#,
            "--priority",
            "-5",
            "--metadata",
            "k=v",
            "--metadata",
            "x=y",
            "--timeout",
            "30s",
            "--wait",
            "--output",
            "json",
        ])?;
        assert_eq!(cli.output, OutputFormat::Json);
        let Command::Submit(args) = cli.command else {
            panic!("not submit");
        };
        assert_eq!(args.queue.as_deref(), Some("upper"));
        assert_eq!(args.json, Some(serde_json::json!("hi")));
        assert_eq!(args.priority, -5);
        assert_eq!(args.metadata.len(), 2);
        assert_eq!(args.wait, Some(Duration::from_secs(50)));
        assert!(!args.watch);

        let cli = parse(&["submit", "q", "--data", "x", "--wait", "2s"])?;
        let Command::Submit(args) = cli.command else {
            panic!("not submit");
        };
        assert_eq!(args.wait, Some(Duration::from_secs(2)));

        assert!(parse(&["submit", "q", "--json", "1", "--data", "x"]).is_err());
        // No body flag: refused, naming the choices; --empty says so.
        let missing = parse(&["submit", "q"]).unwrap_err().to_string();
        assert!(
            missing.contains("--json") && missing.contains("--empty"),
            "{missing}"
        );
        assert!(parse(&["submit", "q", "--empty"]).is_ok());
        assert!(parse(&["submit", "q", "--json", "{nope"]).is_err());
        assert!(parse(&["submit", "q", "--wait", "--watch"]).is_err());

        // --batch: the lines carry everything; a single submit's flags and
        // queue are refused with it.
        let cli = parse(&["submit", "--batch", "-"])?;
        let Command::Submit(args) = cli.command else {
            panic!("not submit");
        };
        assert_eq!(args.batch, Some(PathBuf::from("-")));
        assert_eq!(args.queue, None);
        for extra in [
            &["q"][..],
            &["--json", "1"],
            &["--empty"],
            &["--priority", "3"],
            &["--idempotency-key", "k"],
            &["--wait"],
            &["--delay", "1s"],
        ] {
            let mut args = vec!["submit", "--batch", "f.jsonl"];
            args.extend_from_slice(extra);
            assert!(parse(&args).is_err(), "{extra:?}");
        }
        Ok(())
    }

    #[test]
    fn retry_takes_an_id_or_a_queue() -> Result<(), clap::Error> {
        let cli = parse(&["retry", "01a2"])?;
        let Command::Retry(args) = cli.command else {
            panic!("not retry");
        };
        assert_eq!(args.id.as_deref(), Some("01a2"));
        let cli = parse(&[
            "retry",
            "--queue",
            "q",
            "--state",
            "failed,expired",
            "--older-than",
            "1h",
        ])?;
        let Command::Retry(args) = cli.command else {
            panic!("not retry");
        };
        assert_eq!(args.queue.as_deref(), Some("q"));
        assert_eq!(args.states, [StateArg::Failed, StateArg::Expired]);
        assert_eq!(args.older_than, Some(Duration::from_secs(3600)));
        assert!(parse(&["retry"]).is_err(), "an id or --queue");
        assert!(parse(&["retry", "01a2", "--queue", "q"]).is_err());
        assert!(parse(&["retry", "01a2", "--state", "failed"]).is_err());
        assert!(parse(&["delete"]).is_err());
        assert!(parse(&["delete", "01a2"]).is_ok());
        Ok(())
    }

    #[test]
    fn list_and_work_flags() -> Result<(), clap::Error> {
        let cli = parse(&[
            "list",
            "--state",
            "pending,running",
            "--state",
            "failed",
            "--queue",
            "q",
        ])?;
        let Command::List(args) = cli.command else {
            panic!("not list");
        };
        assert_eq!(
            args.states,
            [StateArg::Pending, StateArg::Running, StateArg::Failed]
        );

        let cli = parse(&[
            "list",
            "--metadata",
            "team=x",
            "--metadata",
            "env=prod",
            "--since",
            "1h",
            "--before",
            "2025-01-31T14:00:00+02:00",
            "--newest-first",
        ])?;
        let Command::List(args) = cli.command else {
            panic!("not list");
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let request = args.request(now);
        assert_eq!(request.metadata.len(), 2);
        assert_eq!(request.metadata["team"], "x");
        assert_eq!(
            request.created_after,
            Some(prost_types::Timestamp {
                seconds: 1_800_000_000 - 3600,
                nanos: 0
            })
        );
        assert_eq!(
            request.created_before,
            Some(prost_types::Timestamp {
                seconds: 1_738_324_800,
                nanos: 0
            })
        );
        assert!(request.newest_first);
        let refused = parse(&["list", "--before", "yesterday"])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("RFC 3339"), "{refused}");
        assert!(parse(&["list", "--since", "1 hour"]).is_err());
        assert!(parse(&["list", "--metadata", "novalue"]).is_err());

        let cli = parse(&[
            "--server",
            "http://h:1",
            "work",
            "--queue",
            "a",
            "--queue",
            "b",
            "--concurrency",
            "4",
            "--",
            "tr",
            "a-z",
            "A-Z",
        ])?;
        assert_eq!(cli.server, "http://h:1");
        let Command::Work(args) = cli.command else {
            panic!("not work");
        };
        assert_eq!(args.queues, ["a", "b"]);
        assert_eq!(args.concurrency, 4);
        assert_eq!(args.command, ["tr", "a-z", "A-Z"]);
        assert!(parse(&["work", "--queue", "a"]).is_err());
        assert!(parse(&["work", "--queue", "a", "--concurrency", "0", "--", "cat"]).is_err());
        Ok(())
    }
}
