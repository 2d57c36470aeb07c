//! Results: medians across repeats, ratios to the baseline, and the two
//! renderings (a table for people, one JSON document for programs).
//!
//! Aggregation across repeats: throughput, requests, each latency
//! percentile and the RSS figures are medians; `success_ratio` is pooled
//! (all successes ÷ all requests) and `errors` are summed; the ratios to the
//! baseline are medians of the per-repeat ratios (each gateway run paired
//! with the baseline run of the same repeat and concurrency).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::args::Settings;
use super::load::{ErrorKey, Measured};
use super::target::RssSource;

/// One measured run.
#[derive(Debug, Clone)]
pub(crate) struct RunRecord {
    pub(crate) mode: &'static str,
    pub(crate) store: String,
    pub(crate) concurrency: usize,
    pub(crate) repeat: usize,
    pub(crate) measured: Measured,
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_after: Option<u64>,
}

/// The runs of one (mode, store, concurrency) across repeats, aggregated.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) mode: &'static str,
    pub(crate) store: String,
    pub(crate) concurrency: usize,
    pub(crate) repeats: usize,
    pub(crate) requests: u64,
    pub(crate) throughput: f64,
    pub(crate) throughput_per_repeat: Vec<f64>,
    /// `[before, after]` of each repeat, in run order.
    pub(crate) rss_per_repeat: Vec<[Option<u64>; 2]>,
    pub(crate) latency_us: Option<[u64; 4]>,
    pub(crate) success_ratio: Option<f64>,
    pub(crate) errors: BTreeMap<ErrorKey, u64>,
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_after: Option<u64>,
    pub(crate) ratio_to_baseline: Option<f64>,
    pub(crate) p50_ratio_to_baseline: Option<f64>,
    /// Median over repeats of the process CPU per successful request.
    pub(crate) cpu_us_per_request: Option<f64>,
    /// Median over repeats of the bench-started redis-server's CPU per
    /// successful request.
    pub(crate) redis_cpu_us_per_request: Option<f64>,
    /// Median over repeats of its append-only file's growth per successful
    /// request.
    pub(crate) redis_aof_bytes_per_request: Option<f64>,
}

/// The median; the mean of the two middle values for an even count.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

fn median_u64(values: impl IntoIterator<Item = u64>) -> Option<u64> {
    let values: Vec<f64> = values.into_iter().map(|v| v as f64).collect();
    median(&values).map(|m| m.round() as u64)
}

/// Aggregates `runs` (one key, several repeats) and pairs them with the
/// baseline runs of the same concurrency.
fn aggregate(runs: &[&RunRecord], baseline: &[&RunRecord]) -> Row {
    let first = runs[0];
    let latency_us = {
        let each: Vec<[u64; 4]> = runs
            .iter()
            .filter_map(|r| r.measured.latency_us())
            .collect();
        (!each.is_empty())
            .then(|| std::array::from_fn(|i| median_u64(each.iter().map(|l| l[i])).unwrap_or(0)))
    };
    let requests: u64 = runs.iter().map(|r| r.measured.requests).sum();
    let succeeded: u64 = runs.iter().map(|r| r.measured.succeeded).sum();
    let mut errors = BTreeMap::new();
    for run in runs {
        for (key, count) in &run.measured.errors {
            *errors.entry(*key).or_default() += count;
        }
    }
    let mut ratios = Vec::new();
    let mut p50_ratios = Vec::new();
    for run in runs {
        let Some(base) = baseline.iter().find(|b| b.repeat == run.repeat) else {
            continue;
        };
        let base_throughput = base.measured.throughput();
        if base_throughput > 0.0 {
            ratios.push(run.measured.throughput() / base_throughput);
        }
        if let (Some(l), Some(b)) = (run.measured.latency_us(), base.measured.latency_us()) {
            p50_ratios.push(l[0] as f64 / b[0].max(1) as f64);
        }
    }
    let throughput_per_repeat: Vec<f64> = runs.iter().map(|r| r.measured.throughput()).collect();
    Row {
        mode: first.mode,
        store: first.store.clone(),
        concurrency: first.concurrency,
        repeats: runs.len(),
        requests: median_u64(runs.iter().map(|r| r.measured.requests)).unwrap_or(0),
        throughput: median(&throughput_per_repeat).unwrap_or(0.0),
        throughput_per_repeat,
        rss_per_repeat: runs.iter().map(|r| [r.rss_before, r.rss_after]).collect(),
        latency_us,
        success_ratio: (requests > 0).then(|| succeeded as f64 / requests as f64),
        errors,
        rss_before: median_u64(runs.iter().filter_map(|r| r.rss_before)),
        rss_after: median_u64(runs.iter().filter_map(|r| r.rss_after)),
        ratio_to_baseline: median(&ratios),
        p50_ratio_to_baseline: median(&p50_ratios),
        cpu_us_per_request: median(
            &runs
                .iter()
                .filter_map(|r| {
                    let cpu = r.measured.cpu?;
                    (r.measured.succeeded > 0)
                        .then(|| cpu.as_secs_f64() * 1e6 / r.measured.succeeded as f64)
                })
                .collect::<Vec<_>>(),
        ),
        redis_cpu_us_per_request: per_request(runs, |m| {
            m.redis.cpu.map(|cpu| cpu.as_secs_f64() * 1e6)
        }),
        redis_aof_bytes_per_request: per_request(runs, |m| m.redis.aof_bytes.map(|b| b as f64)),
    }
}

/// The median over runs of `amount` ÷ successful requests.
fn per_request(runs: &[&RunRecord], amount: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
    median(
        &runs
            .iter()
            .filter(|r| r.measured.succeeded > 0)
            .filter_map(|r| Some(amount(&r.measured)? / r.measured.succeeded as f64))
            .collect::<Vec<_>>(),
    )
}

/// Rows in first-seen order of their (store, concurrency) key.
fn rows(records: &[RunRecord], baseline: &[RunRecord]) -> Vec<Row> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in records {
        let key = (r.store.clone(), r.concurrency);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by_key(|(_, c)| *c);
    keys.iter()
        .map(|(store, concurrency)| {
            let runs: Vec<&RunRecord> = records
                .iter()
                .filter(|r| &r.store == store && r.concurrency == *concurrency)
                .collect();
            let base: Vec<&RunRecord> = baseline
                .iter()
                .filter(|b| b.concurrency == *concurrency)
                .collect();
            aggregate(&runs, &base)
        })
        .collect()
}

/// Everything a load run prints.
pub(crate) struct LoadReport {
    pub(crate) runs: Vec<Row>,
    pub(crate) baseline: Vec<Row>,
}

impl LoadReport {
    pub(crate) fn new(records: &[RunRecord], baseline: &[RunRecord]) -> LoadReport {
        LoadReport {
            runs: rows(records, baseline),
            baseline: rows(baseline, &[]),
        }
    }

    /// Whether every request of every gateway run succeeded.
    pub(crate) fn all_succeeded(&self) -> bool {
        self.runs
            .iter()
            .chain(&self.baseline)
            .all(|row| row.errors.is_empty() && row.success_ratio.is_some())
    }
}

fn row_json(row: &Row, settings: &Settings, with_ratios: bool) -> Value {
    let latency = match row.latency_us {
        Some([p50, p90, p99, max]) => json!({"p50": p50, "p90": p90, "p99": p99, "max": max}),
        None => json!({"p50": null, "p90": null, "p99": null, "max": null}),
    };
    let mut value = json!({
        "mode": row.mode,
        "store": row.store,
        "concurrency": row.concurrency,
        "connections": settings.connections,
        "payload_size": settings.payload_size,
        "duration_s": settings.duration.as_secs_f64(),
        "requests": row.requests,
        "throughput": round2(row.throughput),
        "latency_us": latency,
        "success_ratio": row.success_ratio,
        "errors": row.errors,
        "rss_bytes_before": row.rss_before,
        "rss_bytes_after": row.rss_after,
        "cpu_us_per_request": row.cpu_us_per_request.map(round2),
        "redis_cpu_us_per_request": row.redis_cpu_us_per_request.map(round2),
        "redis_aof_bytes_per_request": row.redis_aof_bytes_per_request.map(round2),
        "repeats": row.repeats,
        "throughput_per_repeat": row.throughput_per_repeat.iter().map(|t| round2(*t)).collect::<Vec<_>>(),
        "rss_bytes_per_repeat": row.rss_per_repeat,
    });
    if with_ratios {
        value["ratio_to_baseline"] = json!(row.ratio_to_baseline.map(round4));
        value["p50_ratio_to_baseline"] = json!(row.p50_ratio_to_baseline.map(round4));
    }
    value
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// `machine` of the JSON document.
pub(crate) fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_owned());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        });
    json!({
        "cpus": cpus,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "kernel": kernel,
        "cpu_model": cpu_model,
    })
}

/// Settings that apply to every row, echoed in the JSON document.
fn settings_json(settings: &Settings) -> Value {
    json!({
        "mode": settings.mode.name(),
        "workers": settings.workers,
        "max_in_flight": settings.max_in_flight,
        "watchers": settings.watchers,
        "batch_size": settings.batch_size,
        "warmup_s": settings.warmup.as_secs_f64(),
        "repeat": settings.repeat,
        "rss_source": RssSource::for_settings(settings).label(),
        "payload_kind": format!("{:?}", settings.payload_kind).to_lowercase(),
        "compression": super::target::compression().map(|e| e.to_string()),
        "payload_wire_bytes": payload_wire_bytes(settings),
    })
}

/// The payload's size as sent, under `--compression` (each direction).
fn payload_wire_bytes(settings: &Settings) -> usize {
    let payload = super::payload(settings.payload_size, settings.payload_kind);
    match super::target::compression() {
        Some(encoding) => super::compressed_size(&payload, encoding),
        None => payload.len(),
    }
}

/// The whole JSON document of a load run.
pub(crate) fn load_json(report: &LoadReport, settings: &Settings, started_at: SystemTime) -> Value {
    let with_ratios = settings.baseline;
    json!({
        "runs": report.runs.iter().map(|r| row_json(r, settings, with_ratios)).collect::<Vec<_>>(),
        "baseline": report.baseline.iter().map(|r| row_json(r, settings, false)).collect::<Vec<_>>(),
        "machine": machine(),
        "settings": settings_json(settings),
        "started_at": humantime::format_rfc3339_seconds(started_at).to_string(),
    })
}

/// The JSON document of the scale scenarios.
pub(crate) fn scale_json(
    scenarios: &[Value],
    settings: &Settings,
    started_at: SystemTime,
) -> Value {
    json!({
        "runs": [],
        "baseline": [],
        "scenarios": scenarios,
        "machine": machine(),
        "settings": settings_json(settings),
        "started_at": humantime::format_rfc3339_seconds(started_at).to_string(),
    })
}

/// `1.23 MiB`-style sizes.
pub(crate) fn bytes(value: Option<u64>) -> String {
    match value {
        None => "-".into(),
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

fn per_request_text(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn errors_text(errors: &BTreeMap<ErrorKey, u64>) -> String {
    if errors.is_empty() {
        return "-".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A plain text table: the first column left-aligned, the others right.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, cell) in cells.iter().enumerate() {
            if i == 0 {
                let _ = write!(out, "{cell:<w$}", w = widths[i]);
            } else {
                let _ = write!(out, "  {cell:>w$}", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The table of a load run.
pub(crate) fn load_text(report: &LoadReport, settings: &Settings) -> String {
    let mut out = String::new();
    let workers = if matches!(
        settings.mode,
        super::args::Mode::Submit
            | super::args::Mode::StreamSubmit
            | super::args::Mode::SubmitBatch
    ) {
        "no workers".to_owned()
    } else {
        format!(
            "{} workers x {} in flight",
            settings.workers, settings.max_in_flight
        )
    };
    let _ = writeln!(
        out,
        "asyncgate bench: mode {}, payload {} B {:?}{}, {} connection(s), {workers}, {:?} measured after {:?} warmup, {}",
        settings.mode.name(),
        settings.payload_size,
        settings.payload_kind,
        match super::target::compression() {
            Some(encoding) => format!(
                " ({encoding}: {} B on the wire)",
                payload_wire_bytes(settings)
            ),
            None => String::new(),
        },
        settings.connections,
        settings.duration,
        settings.warmup,
        if settings.repeat > 1 {
            format!("median of {} repeats", settings.repeat)
        } else {
            "1 run".to_owned()
        }
    );
    if settings.mode == super::args::Mode::WatchFanout {
        let _ = writeln!(out, "{} watchers per ticket", settings.watchers);
    }
    if settings.mode == super::args::Mode::SubmitBatch {
        let _ = writeln!(
            out,
            "{} tickets per SubmitBatch call: requests, req/s and cpu us/req count tickets; latency is per call",
            settings.batch_size
        );
    }
    let header = [
        "target",
        "conc",
        "requests",
        "req/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "max us",
        "success",
        "x base req/s",
        "x base p50",
        "rss before",
        "rss after",
        "cpu us/req",
        "redis us/req",
        "aof B/req",
        "errors",
    ];
    let mut cells = Vec::new();
    let concurrencies: Vec<usize> = {
        let mut c: Vec<usize> = report.runs.iter().map(|r| r.concurrency).collect();
        c.dedup();
        c
    };
    let fmt_row = |row: &Row, name: String| -> Vec<String> {
        let lat = row.latency_us;
        let l = |i: usize| lat.map(|l| l[i].to_string()).unwrap_or_else(|| "-".into());
        vec![
            name,
            row.concurrency.to_string(),
            row.requests.to_string(),
            format!("{:.0}", row.throughput),
            l(0),
            l(1),
            l(2),
            l(3),
            row.success_ratio
                .map(|s| format!("{:.4}", s))
                .unwrap_or_else(|| "-".into()),
            row.ratio_to_baseline
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "-".into()),
            row.p50_ratio_to_baseline
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
            bytes(row.rss_before),
            bytes(row.rss_after),
            per_request_text(row.cpu_us_per_request),
            per_request_text(row.redis_cpu_us_per_request),
            per_request_text(row.redis_aof_bytes_per_request),
            errors_text(&row.errors),
        ]
    };
    for c in concurrencies {
        for base in report.baseline.iter().filter(|b| b.concurrency == c) {
            cells.push(fmt_row(base, "baseline (grpc echo)".into()));
        }
        for row in report.runs.iter().filter(|r| r.concurrency == c) {
            cells.push(fmt_row(row, row.store.clone()));
        }
    }
    out.push_str(&table(&header, &cells));
    if let Some(label) = RssSource::for_settings(settings).label() {
        let _ = writeln!(out, "rss: {label}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::load::histogram;

    fn record(store: &str, concurrency: usize, repeat: usize, ok: u64, p50: u64) -> RunRecord {
        let mut latency = histogram();
        for _ in 0..ok {
            latency.record(p50).unwrap_or_default();
        }
        RunRecord {
            mode: "e2e",
            store: store.into(),
            concurrency,
            repeat,
            measured: Measured {
                requests: ok,
                succeeded: ok,
                errors: BTreeMap::new(),
                latency,
                duration: Duration::from_secs(1),
                cpu: Some(Duration::from_millis(ok)),
                redis: Default::default(),
            },
            rss_before: Some(100),
            rss_after: Some(200 + repeat as u64),
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratios_pair_runs_of_the_same_repeat() {
        let runs = [
            record("memory", 4, 0, 100, 1000),
            record("memory", 4, 1, 300, 1000),
            record("memory", 4, 2, 200, 1000),
        ];
        let base = [
            record("none", 4, 0, 1000, 100),
            record("none", 4, 1, 1000, 100),
            record("none", 4, 2, 2000, 200),
        ];
        let report = LoadReport::new(&runs, &base);
        let row = &report.runs[0];
        assert_eq!(row.throughput, 200.0);
        assert_eq!(row.requests, 200);
        assert_eq!(row.repeats, 3);
        // Per-repeat ratios 0.1, 0.3, 0.1: median 0.1.
        assert_eq!(row.ratio_to_baseline.map(round4), Some(0.1));
        // p50 ratios 10, 10, 5: median 10 (hdrhistogram rounding aside).
        assert!(
            row.p50_ratio_to_baseline
                .is_some_and(|r| (r - 10.0).abs() < 0.1)
        );
        assert_eq!(row.success_ratio, Some(1.0));
        assert_eq!(row.rss_after, Some(201));
        assert!(report.all_succeeded());
        assert_eq!(report.baseline[0].ratio_to_baseline, None);
    }
}
