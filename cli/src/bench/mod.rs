//! `asyncgate bench`: throughput, latency and memory of a gateway, in the
//! spirit of `nats bench` and `redis-benchmark`.
//!
//! - `args.rs`: flags and their per-mode defaults.
//! - `target.rs`: the gateway (embedded or remote), connections, the bench's
//!   own workers, RSS.
//! - `echo.rs`: the `--baseline` plain gRPC echo server.
//! - `load.rs`: the timed closed-loop load modes (submit, e2e, poll,
//!   watch-fanout, stream-submit, stream-e2e, submit-batch, and the echo
//!   baseline).
//! - `scale.rs`: the scale scenarios (backlog, fanout, many-workers).
//! - `report.rs`: medians, ratios, table and JSON.
//! - `cleanup.rs`: submit mode's tickets on a remote gateway are cancelled
//!   after the run (and carry a timeout), so none outlives it.
//!
//! Everything runs on the CLI's one tokio runtime: the embedded gateway, the
//! echo server, the workers and the load share it (and the machine's cores),
//! which is why the baseline runs interleaved with the gateway runs.

mod args;
mod callbacks;
mod cleanup;
mod delayed;
mod echo;
mod load;
mod operate;
mod redis_probe;
mod report;
mod scale;
mod streamed;
pub(crate) mod target;

use std::process::ExitCode;
use std::time::SystemTime;

use asyncgate_proto::bench::EchoRequest;
use bytes::Bytes;

pub(crate) use args::{BenchArgs, LONG_ABOUT};
use args::{Mode, PayloadKind, Settings, TargetSpec};
use asyncgate_client::CompressionEncoding;
use echo::EchoBaseline;
pub(crate) use load::code_name;
use load::{LoadKind, LoadPlan};
use report::{LoadReport, RunRecord};
use target::{Fleet, Gateway, RssSource};

use crate::cli::OutputFormat;

/// Exit code when the bench ran but a request failed or a check did not pass.
const EXIT_INCOMPLETE: u8 = 1;

/// Runs the bench; `server` is the global `--server`.
pub(crate) async fn run(
    server: &str,
    access: target::Access,
    output: OutputFormat,
    args: BenchArgs,
) -> anyhow::Result<ExitCode> {
    let settings = args.resolve(server).map_err(anyhow::Error::msg)?;
    target::set_access(access);
    let started_at = SystemTime::now();
    let body = async {
        if settings.mode.is_scale() {
            run_scale(&settings, output, started_at).await
        } else {
            run_load(&settings, output, started_at).await
        }
    };
    // The body is dropped when the select ends (its load tasks aborted)
    // before the clean-up starts, so nothing submits behind it.
    let finished = tokio::select! {
        result = body => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    match finished {
        Some(result) => result,
        None => {
            target::remove_created_files();
            tokio::select! {
                () = cleanup::cancel_uncleaned() => {}
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("bench: clean-up interrupted; the tickets left expire at their timeout");
                }
            }
            anyhow::bail!("interrupted")
        }
    }
}

/// The payload every request carries: `size` bytes, not all zero; as JSON,
/// an array of order records (about as compressible as typical API data).
pub(crate) fn payload(size: usize, kind: PayloadKind) -> Bytes {
    match kind {
        PayloadKind::Binary => Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        PayloadKind::Json => {
            use std::fmt::Write as _;
            const STATUSES: [&str; 4] = ["pending", "shipped", "delivered", "returned"];
            let mut text = String::with_capacity(size + 128);
            text.push('[');
            let mut index = 0u64;
            // Each record is under 200 bytes; stop before `size` and pad.
            while text.len() + 200 < size {
                if index > 0 {
                    text.push(',');
                }
                // A cheap deterministic mix, so values vary like real data.
                let mix = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                let _ = write!(
                    text,
                    r#"{{"order_id":{},"customer":"customer-{}","status":"{}","amount_cents":{},"items":{},"note":"{}"}}"#,
                    100_000 + index,
                    mix % 5000,
                    STATUSES[(mix % 4) as usize],
                    mix % 100_000,
                    1 + mix % 9,
                    if mix.is_multiple_of(3) {
                        "gift wrap"
                    } else {
                        ""
                    },
                );
                index += 1;
            }
            text.push(']');
            while text.len() < size {
                text.push(' ');
            }
            Bytes::from(text)
        }
    }
}

/// The payload's size on the wire under `--compression` (what tonic sends:
/// gzip level 6, zstd's default level).
pub(crate) fn compressed_size(payload: &[u8], encoding: CompressionEncoding) -> usize {
    match encoding {
        CompressionEncoding::Gzip => {
            use std::io::Write as _;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            let _ = encoder.write_all(payload);
            encoder.finish().map_or(payload.len(), |out| out.len())
        }
        CompressionEncoding::Zstd => zstd::encode_all(payload, zstd::DEFAULT_COMPRESSION_LEVEL)
            .map_or(payload.len(), |out| out.len()),
        _ => payload.len(),
    }
}

fn load_kind(settings: &Settings) -> LoadKind {
    match settings.mode {
        Mode::Submit => LoadKind::Submit,
        Mode::Poll => LoadKind::Poll,
        Mode::WatchFanout => LoadKind::WatchFanout(settings.watchers),
        Mode::StreamSubmit => LoadKind::StreamSubmit,
        Mode::StreamE2e | Mode::StreamTarget => LoadKind::StreamE2e,
        Mode::SubmitBatch => LoadKind::SubmitBatch(settings.batch_size),
        _ => LoadKind::Execute,
    }
}

fn plan(settings: &Settings, kind: LoadKind, concurrency: usize, label: String) -> LoadPlan {
    LoadPlan {
        kind,
        concurrency,
        warmup: settings.warmup,
        duration: settings.duration,
        request_timeout: settings.request_timeout,
        progress: settings.progress.then_some(label),
        created: None,
        cpu: RssSource::None,
        redis: None,
    }
}

/// The load modes: every (repeat, concurrency, target) run, plus the
/// baseline at each (repeat, concurrency), alternating which goes first.
async fn run_load(
    settings: &Settings,
    output: OutputFormat,
    started_at: SystemTime,
) -> anyhow::Result<ExitCode> {
    let bytes = payload(settings.payload_size, settings.payload_kind);
    let echo_request = EchoRequest {
        payload: bytes.clone(),
    };
    let baseline = if settings.baseline {
        Some(EchoBaseline::start().await?)
    } else {
        None
    };
    let mut records = Vec::new();
    let mut baseline_records = Vec::new();
    let result = async {
        for repeat in 0..settings.repeat {
            for &concurrency in &settings.concurrency {
                let baseline_first = repeat % 2 == 0;
                if let (Some(echo), true) = (&baseline, baseline_first) {
                    baseline_records.push(
                        run_baseline(settings, echo, &echo_request, concurrency, repeat).await?,
                    );
                }
                for target in &settings.targets {
                    records.push(run_gateway(settings, target, &bytes, concurrency, repeat).await?);
                }
                if let (Some(echo), false) = (&baseline, baseline_first) {
                    baseline_records.push(
                        run_baseline(settings, echo, &echo_request, concurrency, repeat).await?,
                    );
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Some(echo) = baseline {
        echo.stop().await;
    }
    result?;

    let report = LoadReport::new(&records, &baseline_records);
    match output {
        OutputFormat::Json => println!("{}", report::load_json(&report, settings, started_at)),
        OutputFormat::Text => print!("{}", report::load_text(&report, settings)),
    }
    Ok(if report.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}

fn progress_label(settings: &Settings, what: &str, concurrency: usize, repeat: usize) -> String {
    format!(
        "[{}/{}] {} {what} c={concurrency}",
        repeat + 1,
        settings.repeat,
        settings.mode.name()
    )
}

async fn run_baseline(
    settings: &Settings,
    echo: &EchoBaseline,
    request: &EchoRequest,
    concurrency: usize,
    repeat: usize,
) -> anyhow::Result<RunRecord> {
    let channels = echo.connect(settings.connections).await?;
    let plan = plan(
        settings,
        LoadKind::Echo,
        concurrency,
        progress_label(settings, "baseline", concurrency, repeat),
    );
    let unused = asyncgate_client::pb::SubmitRequest::default();
    let measured = load::run(&plan, &channels, &unused, request).await;
    Ok(RunRecord {
        mode: "baseline-echo",
        store: "none".into(),
        concurrency,
        repeat,
        measured,
        rss_before: None,
        rss_after: None,
    })
}

/// One gateway run: a fresh gateway (embedded) or queue (remote), the
/// bench's workers unless the mode is submit, the load, and the cleanup.
async fn run_gateway(
    settings: &Settings,
    target: &TargetSpec,
    payload: &Bytes,
    concurrency: usize,
    repeat: usize,
) -> anyhow::Result<RunRecord> {
    let queue = target::fresh_queue(settings.mode.name());
    // `--mode target`: the gateway itself calls an echo upstream for the
    // queue (the same method the baseline calls directly).
    let upstream = match settings.mode {
        Mode::Target | Mode::StreamTarget => Some(EchoBaseline::start().await?),
        _ => None,
    };
    let targets = match &upstream {
        Some(echo) => {
            let host = echo.url.trim_start_matches("http://");
            let setting = format!(
                "{queue}=grpc://{host}/asyncgate.bench.v1.Echo/Echo?max_concurrent={}",
                (settings.workers as u32 * settings.max_in_flight).max(1)
            );
            vec![asyncgate_server::targets::parse_target(&setting).map_err(anyhow::Error::msg)?]
        }
        None => Vec::new(),
    };
    let gateway = Gateway::open_with_targets(target, settings, targets).await?;
    let result = async {
        let submit_only = matches!(
            settings.mode,
            Mode::Submit | Mode::StreamSubmit | Mode::SubmitBatch
        );
        let fleet = if submit_only || upstream.is_some() {
            None
        } else {
            Some(
                Fleet::start(
                    &gateway.urls,
                    &queue,
                    settings.workers,
                    settings.max_in_flight,
                    None,
                    settings.time_limit,
                )
                .await?,
            )
        };
        let run = async {
            let channels = target::connect_all(&gateway.urls, settings.connections).await?;
            // A target's ticket carries the encoded request message.
            let body = match settings.mode {
                Mode::Target | Mode::StreamTarget => {
                    Bytes::from(prost::Message::encode_to_vec(&EchoRequest {
                        payload: payload.clone(),
                    }))
                }
                _ => payload.clone(),
            };
            let mut request = target::submit_request(&queue, body);
            let mut plan = plan(
                settings,
                load_kind(settings),
                concurrency,
                progress_label(settings, &gateway.store, concurrency, repeat),
            );
            plan.cpu = gateway.rss;
            plan.redis = gateway.redis_probe();
            if submit_only {
                // No worker serves the queue: without these, every ticket
                // would stay pending on a remote gateway (see cleanup.rs).
                request.timeout =
                    prost_types::Duration::try_from(cleanup::ticket_timeout(settings)).ok();
                if matches!(target, TargetSpec::Remote(_)) {
                    plan.created = Some(cleanup::Created::track(&gateway.url, &queue));
                }
            }
            let rss_before = gateway.rss.read();
            let measured = load::run(&plan, &channels, &request, &EchoRequest::default()).await;
            let rss_after = gateway.rss.read();
            if let Some(created) = &plan.created {
                cleanup::cancel_created(created).await;
            }
            Ok::<_, anyhow::Error>(RunRecord {
                mode: settings.mode.name(),
                store: gateway.store.clone(),
                concurrency,
                repeat,
                measured,
                rss_before,
                rss_after,
            })
        }
        .await;
        if let Some(fleet) = fleet {
            fleet.stop().await;
        }
        run
    }
    .await;
    gateway.close().await;
    if let Some(echo) = upstream {
        echo.stop().await;
    }
    result
}

/// The scale scenarios: each target in turn, `--repeat` times.
async fn run_scale(
    settings: &Settings,
    output: OutputFormat,
    started_at: SystemTime,
) -> anyhow::Result<ExitCode> {
    let mut scenarios = Vec::new();
    let mut passed = true;
    for repeat in 0..settings.repeat {
        for target in &settings.targets {
            let gateway = Gateway::open(target, settings).await?;
            let result = scale::run(settings, &gateway).await;
            gateway.close().await;
            let mut scenario = result?;
            scenario.json["repeat"] = serde_json::json!(repeat + 1);
            if output == OutputFormat::Text {
                print!("{}", scenario.text);
            }
            passed &= scenario.passed;
            scenarios.push(scenario.json);
        }
    }
    if output == OutputFormat::Json {
        println!("{}", report::scale_json(&scenarios, settings, started_at));
    }
    if settings
        .targets
        .iter()
        .any(|t| matches!(t, TargetSpec::Remote(_)))
        && RssSource::for_settings(settings) == RssSource::None
        && output == OutputFormat::Text
    {
        println!("(rss not measured: pass --server-pid PID of the gateway)");
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}
