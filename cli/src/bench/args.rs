//! `asyncgate bench` flags, and the [`Settings`] they resolve to (per-mode
//! defaults filled in, limits checked) before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use asyncgate_client::SUBMIT_BATCH_LIMIT;
use clap::{Args, ValueEnum};

use crate::cli::{parse_duration, parse_size};

/// The largest payload the bench sends: the gateway's default
/// `--max-payload-bytes`.
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// The long help of `asyncgate bench` (`--help`).
pub(crate) const LONG_ABOUT: &str = "\
Measure a gateway: throughput, latency percentiles, success ratio, errors by
gRPC code and memory, optionally as a ratio to a plain gRPC echo served by
this process on the same machine (--baseline).

Target: the gateway at the global --server URL, or one started in this
process with --embedded STORE (`memory`, or a path for the durable store,
which must not exist yet and is deleted afterwards; a comma list runs each
store in turn). Every run uses a fresh queue (and, embedded, a fresh gateway
on 127.0.0.1:0). The bench's own in-process workers (the worker SDK) return
each payload unchanged.

Load modes (closed loop: --concurrency tasks, each sending its next request
when the previous one finished, for --warmup then --duration):
  submit        Submit only (no workers); success = accepted / attempted.
                No ticket outlives the run: each carries a timeout of
                warmup + duration + --request-timeout, and on a --server
                gateway the bench cancels those still pending when the run
                ends (also on Ctrl-C; 32 at once, 60s at most) and says how
                many on stderr
  e2e           Execute, read the stream to the terminal event (default);
                latency = call start to the terminal event
  poll          Submit, then GetTicket with wait until terminal
  watch-fanout  Submit, then --watchers WatchTicket streams per ticket;
                latency to the last watcher seeing the terminal event
  stream-submit Submits on one SubmitStream per connection (the SDK's
                submitter), --concurrency items in flight; no workers,
                tickets cleaned up as in submit mode
  target        Execute through a target queue (--target): the embedded
                gateway itself calls an echo upstream (the method the
                --baseline calls directly) with each ticket's bytes; no
                bench workers; memory or durable store only
  stream-target The same through the streams (as stream-e2e): each ticket
                submitted on SubmitStream, its result read on WatchTickets
  stream-e2e    Each ticket submitted on the connection's SubmitStream and
                its result read from the connection's WatchTickets stream
                (the SDK's submitter and results); latency = submit to
                the result
  submit-batch  SubmitBatch calls of --batch-size tickets (default 100),
                --concurrency calls in flight; no workers, tickets cleaned
                up as in submit mode. Requests, req/s, success, errors and
                cpu per request count tickets; latency is per call

Scale scenarios (bounded by --tickets, and by --time-limit per phase):
  callbacks     Submit --tickets (default 1000000) with an HTTP callback to
                a receiver in this process, no worker; then end them all
                with one purge: deliveries per second from the first to
                the last, and CPU per delivery; memory or durable store
  backlog       Submit --tickets (default 1000000) with no worker connected:
                rate and RSS per slice of 100k; then start the workers and
                measure the drain until no ticket is PENDING or RUNNING
  fanout        --watchers (default 10000) WatchTicket streams on one
                ticket over --connections (default 8): RSS growth, and how
                many watchers saw the terminal event (seen/total)
  many-workers  --workers (default 1000) workers with max_in_flight 1 on one
                queue, --tickets (default 100000) tickets: tasks per worker
                (max, min, spread max/min)
  queues        Submit --tickets (default 1000000) over --queues (default
                100) queues with no worker, then call Admin.ListQueues one
                after another for --duration: its latency percentiles, and
                whether every queue and ticket is listed; the tickets are
                purged afterwards (Admin.PurgeQueue)
  rate-limit    Set --rate leases/s and --max-concurrent on a fresh queue
                (Admin.SetQueueLimits), keep it full of tickets, and run
                them on --workers workers (spread over the replicas) that
                hold each task --hold: the delivered rate after --warmup,
                over --duration, and the most tasks the workers ran at once
  delayed       Submit --tickets (default 1000000) delayed tickets that come
                due at --rate per second (default 10000) from a start far
                enough ahead for the submits to finish: RSS per pending
                ticket, then lateness (worker receipt - not_before)
                percentiles as --workers workers run them

Output: a table on stdout, or one JSON document with the global
--output json; a progress line on stderr about once a second (--quiet: none).
With --repeat N the whole matrix runs N times, interleaved (and with the
baseline run alternately before and after the gateway runs); each row holds
the medians across repeats, success_ratio is pooled, errors are summed.
RSS is this process's (the embedded gateway and the bench's clients and
workers together) with --embedded, or that of --server-pid; so is the CPU
time per request (cpu_us_per_request: user + system over the measured time,
divided by the requests that succeeded).

Exit codes: 0 when every request succeeded and every check passed; 1 when the
bench completed but some requests failed or a check did not pass; 2 when it
could not run.";

/// The flags of `asyncgate bench`; see [`LONG_ABOUT`].
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Start the gateway in this process with this store: `memory`, the
    /// path of a durable store file that does not exist yet (deleted after
    /// each run), `redis` (a redis-server the bench starts on a free port,
    /// append-only with fsync always) or a `redis://` URL (keys under a
    /// fresh prefix per run). A comma list runs each store in turn.
    #[arg(long, value_name = "STORE[,STORE...]", value_delimiter = ',')]
    pub(crate) embedded: Vec<String>,

    /// Gateway replicas sharing each Redis store; a comma list runs each
    /// count (default 1). Clients and workers are spread over the replicas.
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',')]
    pub(crate) replicas: Vec<usize>,

    /// What to measure (the modes are described in --help).
    #[arg(long, value_enum, default_value_t = Mode::E2e)]
    pub(crate) mode: Mode,

    /// Requests in flight; a comma list runs each (default 64).
    #[arg(long, value_name = "N[,N...]", value_delimiter = ',')]
    pub(crate) concurrency: Vec<usize>,

    /// Tickets per SubmitBatch call of --mode submit-batch (1 to 1000).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) batch_size: usize,

    /// Separate HTTP/2 connections the requests round-robin over (default 1;
    /// 8 for fanout).
    #[arg(long, value_name = "N")]
    pub(crate) connections: Option<usize>,

    /// Workers started by the bench (default 2; 1000 for many-workers).
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,

    /// Tasks each worker runs at once (default 64; 1 for many-workers).
    #[arg(long, value_name = "N")]
    pub(crate) max_in_flight: Option<u32>,

    /// WatchTicket streams per ticket (default 10 for watch-fanout, 10000
    /// for fanout).
    #[arg(long, value_name = "N")]
    pub(crate) watchers: Option<usize>,

    /// Tickets of a scale scenario (default 1000000 for backlog and queues,
    /// 100000 for many-workers).
    #[arg(long, value_name = "N")]
    pub(crate) tickets: Option<u64>,

    /// Queues the queues scenario spreads its tickets over.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) queues: usize,

    /// The rate-limit scenario's max_dispatch_per_second (default 500);
    /// the delayed scenario's tickets coming due per second (default
    /// 10000).
    #[arg(long, value_name = "N")]
    pub(crate) rate: Option<u32>,

    /// The rate-limit scenario's max_concurrent (0: none).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub(crate) max_concurrent: u32,

    /// How long the rate-limit scenario's workers hold each task.
    #[arg(long, default_value = "20ms", value_parser = parse_duration, value_name = "DUR")]
    pub(crate) hold: Duration,

    /// Payload size per request: bytes, or a size with a unit such as
    /// 64KiB (KiB = 1024 bytes; KB = 1000).
    #[arg(long, default_value = "1KiB", value_name = "SIZE", value_parser = parse_size)]
    pub(crate) payload_size: usize,

    /// What the payload holds: `binary` (hardly compressible) or `json` (a
    /// realistic JSON document, as compressible as typical API data).
    #[arg(long, value_enum, default_value_t = PayloadKind::Binary)]
    pub(crate) payload_kind: PayloadKind,

    /// Measured time per run.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub(crate) duration: Duration,

    /// Unmeasured time before the measured samples start.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    pub(crate) warmup: Duration,

    /// Run the whole matrix N times, interleaved; rows hold the medians.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) repeat: usize,

    /// Also measure a plain unary gRPC echo (served by this process) at the
    /// same concurrency, payload and duration, interleaved with the gateway
    /// runs; gateway rows then carry ratios to it.
    #[arg(long)]
    pub(crate) baseline: bool,

    /// Report the RSS of this process (the gateway's, for a gateway started
    /// elsewhere).
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,

    /// A request that takes longer counts as an error (CLIENT_TIMEOUT).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub(crate) request_timeout: Duration,

    /// Bound on each phase of a scale scenario (submitting, draining,
    /// connecting, watching); what is done by then is reported.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DUR")]
    pub(crate) time_limit: Duration,

    /// No progress lines on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// See [`BenchArgs`].
/// See `--payload-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PayloadKind {
    Binary,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    Submit,
    E2e,
    Poll,
    WatchFanout,
    StreamSubmit,
    StreamE2e,
    SubmitBatch,
    Backlog,
    Fanout,
    ManyWorkers,
    Queues,
    RateLimit,
    Delayed,
    Callbacks,
    Target,
    StreamTarget,
}

impl Mode {
    /// The name on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Submit => "submit",
            Mode::E2e => "e2e",
            Mode::Poll => "poll",
            Mode::WatchFanout => "watch-fanout",
            Mode::StreamSubmit => "stream-submit",
            Mode::StreamE2e => "stream-e2e",
            Mode::SubmitBatch => "submit-batch",
            Mode::Backlog => "backlog",
            Mode::Fanout => "fanout",
            Mode::ManyWorkers => "many-workers",
            Mode::Queues => "queues",
            Mode::RateLimit => "rate-limit",
            Mode::Delayed => "delayed",
            Mode::Callbacks => "callbacks",
            Mode::Target => "target",
            Mode::StreamTarget => "stream-target",
        }
    }

    /// A scale scenario rather than a timed load.
    pub(crate) fn is_scale(self) -> bool {
        matches!(
            self,
            Mode::Backlog
                | Mode::Fanout
                | Mode::ManyWorkers
                | Mode::Queues
                | Mode::RateLimit
                | Mode::Delayed
                | Mode::Callbacks
        )
    }
}

/// Where a gateway comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetSpec {
    /// Already running at this URL.
    Remote(String),
    /// Started in this process with the memory store.
    Memory,
    /// Started in this process with a durable store in this (fresh) file.
    Durable(PathBuf),
    /// `replicas` gateways started in this process on one Redis: at this
    /// URL, or one the bench starts.
    Redis {
        /// The Redis, or `None` to start one.
        url: Option<String>,
        /// Gateways sharing it.
        replicas: usize,
    },
}

impl TargetSpec {
    /// The `store` of a report row.
    pub(crate) fn label(&self) -> String {
        match self {
            TargetSpec::Remote(_) => "remote".to_owned(),
            TargetSpec::Memory => "memory".to_owned(),
            TargetSpec::Durable(path) => format!("durable:{}", path.display()),
            TargetSpec::Redis {
                url: None,
                replicas,
            } => format!("redis x{replicas}"),
            TargetSpec::Redis {
                url: Some(url),
                replicas,
            } => format!("{url} x{replicas}"),
        }
    }
}

/// The flags with every default resolved and every limit checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    pub(crate) targets: Vec<TargetSpec>,
    /// Whether the RSS is this process's (embedded gateways).
    pub(crate) embedded: bool,
    pub(crate) server_pid: Option<u32>,
    pub(crate) concurrency: Vec<usize>,
    /// Tickets per call of submit-batch.
    pub(crate) batch_size: usize,
    pub(crate) connections: usize,
    pub(crate) workers: usize,
    pub(crate) max_in_flight: u32,
    pub(crate) watchers: usize,
    pub(crate) tickets: u64,
    pub(crate) queues: usize,
    pub(crate) rate: u32,
    pub(crate) max_concurrent: u32,
    pub(crate) hold: Duration,
    pub(crate) payload_size: usize,
    pub(crate) payload_kind: PayloadKind,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) repeat: usize,
    pub(crate) baseline: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) time_limit: Duration,
    pub(crate) progress: bool,
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, String> {
    if value < min || value > max {
        return Err(format!(
            "--{flag} must be between {min} and {max}, not {value}"
        ));
    }
    Ok(value)
}

impl BenchArgs {
    /// Fills in the per-mode defaults and checks the limits; `server` is the
    /// global `--server`, used when `--embedded` is not given.
    pub(crate) fn resolve(self, server: &str) -> Result<Settings, String> {
        let mode = self.mode;
        let replica_counts = if self.replicas.is_empty() {
            vec![1]
        } else {
            self.replicas.clone()
        };
        for &n in &replica_counts {
            check_range("replicas", n, 1, 16)?;
        }
        let targets = if self.embedded.is_empty() {
            if !self.replicas.is_empty() {
                return Err("--replicas applies to --embedded redis stores".into());
            }
            vec![TargetSpec::Remote(server.to_owned())]
        } else {
            let mut targets = Vec::new();
            for store in &self.embedded {
                let redis = |url: Option<String>| {
                    replica_counts
                        .iter()
                        .map(move |&replicas| TargetSpec::Redis {
                            url: url.clone(),
                            replicas,
                        })
                };
                match store.trim() {
                    "" => {
                        return Err(
                            "--embedded: empty store name (use `memory`, `redis` or a file path)"
                                .into(),
                        );
                    }
                    "memory" => targets.push(TargetSpec::Memory),
                    "redis" => targets.extend(redis(None)),
                    url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                        targets.extend(redis(Some(url.to_owned())))
                    }
                    s if s.contains("://") => {
                        return Err(format!(
                            "--embedded {s}: use `memory`, `redis`, a redis:// URL or a file path (a remote gateway goes in --server)"
                        ));
                    }
                    path => targets.push(TargetSpec::Durable(PathBuf::from(path))),
                }
            }
            targets
        };
        let concurrency = if self.concurrency.is_empty() {
            vec![64]
        } else {
            self.concurrency
        };
        for &c in &concurrency {
            check_range("concurrency", c, 1, 100_000)?;
        }
        if mode.is_scale() && concurrency.len() > 1 {
            return Err(format!(
                "--mode {} takes one --concurrency value",
                mode.name()
            ));
        }
        let default_connections = if mode == Mode::Fanout { 8 } else { 1 };
        let default_workers = if mode == Mode::ManyWorkers { 1000 } else { 2 };
        let default_in_flight = if mode == Mode::ManyWorkers { 1 } else { 64 };
        let default_watchers = if mode == Mode::Fanout { 10_000 } else { 10 };
        let default_tickets = if mode == Mode::ManyWorkers {
            100_000
        } else {
            1_000_000
        };
        if self.baseline && mode.is_scale() {
            return Err(format!(
                "--baseline applies to the load modes (submit, e2e, poll, watch-fanout, stream-submit, stream-e2e, submit-batch), not {}",
                mode.name()
            ));
        }
        if self.duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        Ok(Settings {
            mode,
            embedded: !self.embedded.is_empty(),
            targets,
            server_pid: self.server_pid,
            concurrency,
            batch_size: check_range("batch-size", self.batch_size, 1, SUBMIT_BATCH_LIMIT)?,
            connections: check_range(
                "connections",
                self.connections.unwrap_or(default_connections),
                1,
                1024,
            )?,
            workers: check_range(
                "workers",
                self.workers.unwrap_or(default_workers),
                1,
                10_000,
            )?,
            max_in_flight: check_range(
                "max-in-flight",
                self.max_in_flight.unwrap_or(default_in_flight),
                1,
                asyncgate_client::worker::MAX_IN_FLIGHT_LIMIT,
            )?,
            watchers: check_range(
                "watchers",
                self.watchers.unwrap_or(default_watchers),
                1,
                100_000,
            )?,
            tickets: check_range(
                "tickets",
                self.tickets.unwrap_or(default_tickets),
                1,
                100_000_000,
            )?,
            queues: check_range("queues", self.queues, 1, 10_000)?,
            rate: check_range(
                "rate",
                self.rate
                    .unwrap_or(if mode == Mode::Delayed { 10_000 } else { 500 }),
                1,
                1_000_000,
            )?,
            max_concurrent: check_range("max-concurrent", self.max_concurrent, 0, 10_000_000)?,
            hold: self.hold,
            payload_size: check_range("payload-size", self.payload_size, 0, MAX_PAYLOAD)?,
            payload_kind: self.payload_kind,
            duration: self.duration,
            warmup: self.warmup,
            repeat: check_range("repeat", self.repeat, 1, 1000)?,
            baseline: self.baseline,
            request_timeout: self.request_timeout.max(Duration::from_millis(1)),
            time_limit: self.time_limit.max(Duration::from_secs(1)),
            progress: !self.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(["asyncgate", "bench"].iter().chain(args).copied())
            .map_err(|e| e.to_string())?;
        let Command::Bench(bench) = cli.command else {
            return Err("not bench".into());
        };
        bench.resolve(&cli.server)
    }

    #[test]
    fn defaults_per_mode() -> Result<(), String> {
        let s = settings(&[])?;
        assert_eq!(s.mode, Mode::E2e);
        assert_eq!(s.concurrency, [64]);
        assert_eq!((s.connections, s.workers, s.max_in_flight), (1, 2, 64));
        assert_eq!(s.payload_size, 1024);
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.warmup, Duration::from_secs(2));
        assert_eq!(
            s.targets,
            [TargetSpec::Remote("http://127.0.0.1:50051".into())]
        );
        assert!(!s.embedded);

        let s = settings(&["--mode", "fanout"])?;
        assert_eq!((s.connections, s.watchers), (8, 10_000));
        let s = settings(&["--mode", "many-workers"])?;
        assert_eq!((s.workers, s.max_in_flight, s.tickets), (1000, 1, 100_000));
        let s = settings(&["--mode", "backlog"])?;
        assert_eq!((s.tickets, s.concurrency[0]), (1_000_000, 64));
        let s = settings(&["--mode", "watch-fanout"])?;
        assert_eq!(s.watchers, 10);
        let s = settings(&["--mode", "submit-batch"])?;
        assert_eq!((s.batch_size, s.concurrency[0]), (100, 64));
        let s = settings(&["--mode", "submit-batch", "--batch-size", "1000"])?;
        assert_eq!(s.batch_size, 1000);
        assert!(settings(&["--batch-size", "1001"]).is_err());
        assert!(settings(&["--batch-size", "0"]).is_err());
        Ok(())
    }

    #[test]
    fn lists_and_limits() -> Result<(), String> {
        let s = settings(&[
            "--embedded",
            "memory,/tmp/x.redb",
            "--concurrency",
            "1,16,64,256",
            "--duration",
            "5s",
            "--repeat",
            "2",
            "--baseline",
        ])?;
        assert_eq!(
            s.targets,
            [
                TargetSpec::Memory,
                TargetSpec::Durable(PathBuf::from("/tmp/x.redb"))
            ]
        );
        assert_eq!(s.concurrency, [1, 16, 64, 256]);
        assert!(s.embedded && s.baseline);
        assert!(settings(&["--concurrency", "0"]).is_err());
        assert!(settings(&["--embedded", "http://x"]).is_err());
        let redis = settings(&["--embedded", "memory,redis", "--replicas", "1,3"]).unwrap();
        assert_eq!(
            redis.targets,
            [
                TargetSpec::Memory,
                TargetSpec::Redis {
                    url: None,
                    replicas: 1
                },
                TargetSpec::Redis {
                    url: None,
                    replicas: 3
                },
            ]
        );
        assert!(settings(&["--replicas", "2"]).is_err());
        assert!(settings(&["--mode", "backlog", "--baseline"]).is_err());
        assert!(settings(&["--mode", "backlog", "--concurrency", "1,2"]).is_err());
        assert!(settings(&["--mode", "nope"]).is_err());
        assert!(settings(&["--payload-size", "99999999"]).is_err());
        assert_eq!(settings(&["--payload-size", "64KiB"])?.payload_size, 65_536);
        assert_eq!(
            settings(&["--payload-size", "1 MB"])?.payload_size,
            1_000_000
        );
        assert_eq!(settings(&["--payload-size", "512"])?.payload_size, 512);
        let error = settings(&["--payload-size", "4XB"]).unwrap_err();
        assert!(error.contains("--payload-size"), "{error}");
        assert!(error.contains("KiB, MiB, GiB"), "{error}");
        Ok(())
    }
}
