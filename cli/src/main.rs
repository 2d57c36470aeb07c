//! `asyncgate`: the command-line client of Asyncgate.
//!
//! - `cli.rs`: the clap definitions and value parsers (durations, ...).
//! - `output.rs`: text for people, proto3 JSON (via prost-reflect) for
//!   programs.
//! - `batch.rs`: `asyncgate submit --batch FILE`, JSON lines in, a result
//!   per line out.
//! - `status.rs`: what `--wait` and `--watch` say on stderr meanwhile
//!   (waiting reasons, progress).
//! - `work.rs`: `asyncgate work -- CMD`, a worker that runs a command per task.
//! - `bench/`: `asyncgate bench`, throughput/latency/memory measurements.
//! - this file: dispatch, exit codes (0 ok, 1 ticket failed/cancelled/
//!   expired or a gateway not serving, 2 usage/connection/gateway error).

mod admin;
mod batch;
mod bench;
mod cli;
mod output;
mod schedule;
mod status;
mod work;

use std::process::ExitCode;

use anyhow::Context as _;
use asyncgate_client::{Client, EventStream, Submit, Tls, is_terminal, pb};
use clap::Parser as _;
use futures::StreamExt as _;

use crate::cli::{Cli, Command, GetArgs, SubmitArgs};
use crate::output::Printer;

/// mimalloc: the gateway allocates and frees small objects on every message;
/// glibc's allocator spent about 15% of CPU on that in the benchmark's e2e
/// profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Usage, connection and gateway errors (clap also exits 2 on bad usage).
const EXIT_ERROR: u8 = 2;
/// The ticket ended FAILED, CANCELLED or EXPIRED (or, for `health`, the
/// gateway is not serving; for `submit --batch`, a line was refused).
const EXIT_TICKET_FAILED: u8 = 1;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Work(_)));
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG; by default warnings only, or info
/// for `work` (a long-running process whose connects and drains matter).
fn init_tracing(work: bool) {
    let default = if work { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal (and not under NO_COLOR): a log file or a
    // pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let printer = Printer::new(cli.output)?;
    let tls = if cli.ca_cert.is_some() || cli.client_cert.is_some() {
        Some(Tls::from_files(
            cli.ca_cert.as_deref(),
            cli.client_cert.as_deref(),
            cli.client_key.as_deref(),
        )?)
    } else {
        None
    };
    let server = &Gateway {
        url: cli.server.clone(),
        tls,
        api_key: cli.api_key.clone(),
        compression: cli.compression.map(Into::into),
    };
    match cli.command {
        // The worker connects (and reconnects) on its own.
        Command::Work(args) => {
            work::run(
                server.url.as_str(),
                server.tls.clone(),
                server.api_key.as_deref(),
                server.compression,
                args,
            )
            .await
        }
        Command::Bench(args) => {
            let access = bench::target::Access {
                tls: server.tls.clone(),
                credentials: match &server.api_key {
                    Some(key) => asyncgate_client::Credentials::api_key(key)?,
                    None => asyncgate_client::Credentials::default(),
                },
                compression: server.compression,
            };
            bench::run(server.url.as_str(), access, cli.output, args).await
        }
        Command::Health(args) => {
            let serving = connect(server).await?.serving(&args.service).await?;
            printer.health(serving)?;
            Ok(if serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_TICKET_FAILED)
            })
        }
        Command::Submit(args) => submit(&connect(server).await?, &printer, args).await,
        Command::Get(args) => get(&connect(server).await?, &printer, args).await,
        Command::Watch(args) => {
            let events = connect(server)
                .await?
                .watch(&args.id, args.after_seq)
                .await?;
            print_events(&printer, events).await
        }
        Command::Cancel(args) => {
            let ticket = connect(server)
                .await?
                .cancel(&args.id, &args.reason)
                .await?;
            printer.ticket(&ticket)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Queues => admin::queues(&connect(server).await?, &printer).await,
        Command::Schedule(args) => {
            schedule::schedule(&connect(server).await?, &printer, args).await
        }
        Command::Workers { queue } => {
            admin::workers(&connect(server).await?, &printer, queue).await
        }
        Command::Drain { session } => {
            admin::drain(&connect(server).await?, &printer, &session).await
        }
        Command::Queue(args) => admin::queue(&connect(server).await?, &printer, args).await,
        Command::Retry(args) => admin::retry(&connect(server).await?, &printer, args).await,
        Command::Delete(args) => admin::delete(&connect(server).await?, &printer, args).await,
        Command::List(args) => {
            let request = args.request(std::time::SystemTime::now());
            printer.list(&connect(server).await?.list(request).await?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where the gateway is and how to reach it.
struct Gateway {
    url: String,
    tls: Option<Tls>,
    api_key: Option<String>,
    compression: Option<asyncgate_client::CompressionEncoding>,
}

async fn connect(server: &Gateway) -> anyhow::Result<Client> {
    let url = server.url.as_str();
    let client = match &server.tls {
        Some(tls) => Client::connect_with_tls(url, tls).await,
        None => Client::connect(url).await,
    }
    .with_context(|| format!("connecting to {url}"))?;
    let client = match &server.api_key {
        Some(key) => client.with_api_key(key)?,
        None => client,
    };
    Ok(match server.compression {
        Some(encoding) => client.with_compression(encoding),
        None => client,
    })
}

async fn submit(client: &Client, printer: &Printer, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.batch {
        return batch::run(client, printer, path).await;
    }
    // Required by clap unless --batch is given.
    let queue = args.queue.context("a queue is required")?;
    let mut request = Submit::new(queue).priority(args.priority);
    if let Some(value) = args.json {
        request = request.json(value);
    } else if let Some(path) = args.file {
        request = request.binary(read_file(&path).await?, "application/octet-stream");
    } else if let Some(text) = args.data {
        request = request.text(text);
    }
    if let Some(key) = args.idempotency_key {
        request = request.idempotency_key(key);
    }
    for (key, value) in args.metadata {
        request = request.metadata(key, value);
    }
    if let Some(timeout) = args.timeout {
        request = request.timeout(timeout);
    }
    if let Some(delay) = args.delay {
        request = request.delay(delay);
    }
    if let Some(at) = args.at {
        request = request.not_before(at);
    }
    if let Some(url) = args.callback {
        request = request.callback(url);
    }
    if let Some(timeout) = args.attempt_timeout {
        request = request.attempt_timeout(timeout);
    }
    if let Some(attempts) = args.max_attempts {
        request = request.max_attempts(attempts);
    }

    if args.watch {
        let events = client.execute(request).await?;
        return print_events(printer, events).await;
    }
    let ticket = client.submit(request).await?;
    match args.wait {
        None => {
            printer.ticket(&ticket)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(wait) => {
            let ticket = wait_until_terminal(client, ticket, wait).await?;
            printer.ticket(&ticket)?;
            Ok(exit_code(ticket.state()))
        }
    }
}

async fn get(client: &Client, printer: &Printer, args: GetArgs) -> anyhow::Result<ExitCode> {
    let ticket = client.get(&args.id, None).await?;
    let ticket = match args.wait {
        Some(wait) => wait_until_terminal(client, ticket, wait).await?,
        None => ticket,
    };
    printer.ticket(&ticket)?;
    Ok(exit_code(ticket.state()))
}

/// How often a wait asks for the ticket again, besides its long-poll, to
/// notice a new waiting reason (a worker connected, the queue moved): those
/// changes end no long-poll.
const REASON_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Long-polls `GetTicket` (`wait` per request) until the ticket is terminal.
/// Meanwhile stderr gets the ticket id and its waiting reason, at once and
/// on every change (see [`status::WaitNotes`]).
async fn wait_until_terminal(
    client: &Client,
    ticket: pb::Ticket,
    wait: std::time::Duration,
) -> anyhow::Result<pb::Ticket> {
    let notes = std::sync::Mutex::new(status::WaitNotes::default());
    let observe = |ticket: &pb::Ticket| {
        notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(ticket)
    };
    observe(&ticket);
    let id = ticket.id.clone();
    let long_poll = async {
        let mut ticket = ticket;
        while !is_terminal(ticket.state()) {
            ticket = client.get(&ticket.id, Some(wait)).await?;
            observe(&ticket);
        }
        Ok(ticket)
    };
    // Reads only; an error here is the long-poll's to report.
    let refresh = async {
        let mut ticks = tokio::time::interval(REASON_REFRESH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Ok(ticket) = client.get(&id, None).await {
                observe(&ticket);
            }
        }
    };
    tokio::select! {
        done = long_poll => done,
        () = refresh => unreachable!("the refresh loop never ends"),
    }
}

/// Prints every event; the exit code follows the last state seen. Progress
/// reports also go to stderr (see [`status::ProgressView`]).
async fn print_events(printer: &Printer, mut events: EventStream) -> anyhow::Result<ExitCode> {
    let mut state = pb::TicketState::Unspecified;
    let mut progress = status::ProgressView::for_stderr();
    loop {
        let due = progress.next_line_at();
        let event = tokio::select! {
            event = events.next() => event,
            () = sleep_until(due) => {
                progress.flush();
                continue;
            }
        };
        let Some(event) = event else { break };
        let event = event?;
        if let Some(ticket) = &event.ticket {
            state = ticket.state();
        }
        progress.observe(&event);
        progress.suspend(|| printer.event(&event))?;
    }
    progress.finish();
    Ok(exit_code(state))
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn exit_code(state: pb::TicketState) -> ExitCode {
    match state {
        pb::TicketState::Failed | pb::TicketState::Cancelled | pb::TicketState::Expired => {
            ExitCode::from(EXIT_TICKET_FAILED)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// A file's bytes, or stdin's for "-".
async fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        // A blocking read on a blocking thread (tokio's async stdin is
        // not enabled in this workspace, and does the same underneath).
        let read = tokio::task::spawn_blocking(|| {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut data).map(|_| data)
        });
        return read
            .await
            .context("reading stdin")?
            .context("reading stdin");
    }
    tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))
}
