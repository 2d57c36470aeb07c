//! `asyncgate bench`, run for real (briefly): the binary starts an embedded
//! gateway, its workers and the echo baseline, and prints one JSON document
//! whose names scripts depend on.

use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_asyncgate"))
        .arg("bench")
        .args(args)
        .args(["--output", "json", "--quiet"])
        .env_remove("ASYNCGATE_SERVER")
        .output()
        .expect("the asyncgate binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the bench took {:?}",
        started.elapsed()
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn number(value: &Value, what: &str) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

/// The latency and throughput fields of one row.
fn check_row(row: &Value) {
    assert!(number(&row["requests"], "requests") > 0.0, "{row}");
    assert!(number(&row["throughput"], "throughput") > 0.0, "{row}");
    assert_eq!(row["success_ratio"], 1.0, "{row}");
    let latency = &row["latency_us"];
    let p50 = number(&latency["p50"], "p50");
    let p90 = number(&latency["p90"], "p90");
    let p99 = number(&latency["p99"], "p99");
    let max = number(&latency["max"], "max");
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{latency}"
    );
    assert_eq!(row["errors"], serde_json::json!({}), "{row}");
}

#[test]
fn e2e_against_an_embedded_memory_gateway_with_baseline() {
    let report = bench(&[
        "--embedded",
        "memory",
        "--mode",
        "e2e",
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--baseline",
    ]);
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{report}");
    let run = &runs[0];
    check_row(run);
    assert_eq!(run["mode"], "e2e");
    assert_eq!(run["store"], "memory");
    assert_eq!(run["concurrency"], 4);
    assert_eq!(run["connections"], 1);
    assert_eq!(run["payload_size"], 1024);
    assert_eq!(run["duration_s"], 1.0);
    assert!(number(&run["ratio_to_baseline"], "ratio_to_baseline") > 0.0);
    assert!(number(&run["p50_ratio_to_baseline"], "p50_ratio_to_baseline") > 0.0);
    assert!(number(&run["rss_bytes_before"], "rss_bytes_before") > 0.0);
    assert!(number(&run["rss_bytes_after"], "rss_bytes_after") > 0.0);
    // The process's CPU over the measured second, per request (the
    // embedded gateway with the bench's own clients and workers).
    assert!(number(&run["cpu_us_per_request"], "cpu_us_per_request") > 0.0);

    let baseline = report["baseline"].as_array().expect("baseline");
    assert_eq!(baseline.len(), 1, "{report}");
    check_row(&baseline[0]);
    assert_eq!(baseline[0]["concurrency"], 4);

    assert!(number(&report["machine"]["cpus"], "cpus") >= 1.0);
    assert!(report["machine"]["os"].is_string());
    assert!(report["started_at"].is_string());
}

#[test]
fn submit_against_an_embedded_durable_gateway() {
    let path = std::env::temp_dir().join(format!(
        "asyncgate-bench-smoke-{}-{}.redb",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let store = path.to_str().expect("a UTF-8 temp path");
    let report = bench(&[
        "--embedded",
        store,
        "--mode",
        "submit",
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    let run = &report["runs"][0];
    check_row(run);
    assert_eq!(run["mode"], "submit");
    assert_eq!(run["store"], format!("durable:{store}"));
    // No baseline: no ratios.
    assert!(run["ratio_to_baseline"].is_null(), "{run}");
    assert_eq!(report["baseline"], serde_json::json!([]));
    assert!(!path.exists(), "the bench deletes its store file");
    let log = std::path::PathBuf::from(format!("{}-wal", path.display()));
    assert!(!log.exists(), "and its write-ahead log");
}

/// Batches on the durable store: the counts are tickets (a multiple of the
/// batch size), the latency is per call.
#[test]
fn submit_batch_against_an_embedded_durable_gateway() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("batch.redb");
    let store = path.to_str().expect("a UTF-8 temp path");
    let report = bench(&[
        "--embedded",
        store,
        "--mode",
        "submit-batch",
        "--batch-size",
        "50",
        "--concurrency",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    let run = &report["runs"][0];
    check_row(run);
    assert_eq!(run["mode"], "submit-batch");
    assert_eq!(report["settings"]["batch_size"], 50);
    let tickets = number(&run["requests"], "requests");
    assert_eq!(tickets % 50.0, 0.0, "whole batches of tickets: {run}");
    assert!(number(&run["throughput"], "throughput") >= 50.0, "{run}");
    assert!(!path.exists(), "the bench deletes its store file");
}

/// `--mode target`: tickets of a target queue, worked by the gateway itself
/// calling the echo upstream, beside the same echo called directly.
#[test]
fn target_mode_runs_tickets_through_an_upstream_method() {
    let report = bench(&[
        "--embedded",
        "memory",
        "--mode",
        "target",
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--baseline",
    ]);
    let run = &report["runs"][0];
    check_row(run);
    assert_eq!(run["mode"], "target");
    check_row(&report["baseline"][0]);
    assert!(
        number(&run["ratio_to_baseline"], "ratio_to_baseline") > 0.0,
        "{run}"
    );
}

#[test]
fn e2e_against_a_remote_gateway_with_tls_and_an_api_key() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    let key = "bench-admin-key";
    std::fs::write(
        dir.path().join("keys.toml"),
        format!(
            "[[keys]]\nname = \"bench\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            asyncgate_server::auth::digest_hex(key)
        ),
    )
    .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let running = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        asyncgate_server::start_on(
            asyncgate_server::Config {
                store: asyncgate_server::config::StoreConfig::Memory,
                tls: Some(asyncgate_server::config::TlsFiles {
                    cert: dir.path().join("server.pem"),
                    key: dir.path().join("server.key"),
                    client_ca: None,
                }),
                keys: Some(dir.path().join("keys.toml")),
                ..asyncgate_server::Config::default()
            },
            listener,
        )
        .await
        .unwrap()
    });
    let url = format!("https://{}", running.local_addr());
    let ca = dir.path().join("ca.pem");
    let report = bench(&[
        "--server",
        &url,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--api-key",
        key,
        "--mode",
        "e2e",
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    let run = &report["runs"][0];
    check_row(run);
    assert_eq!(run["store"], "remote");
    runtime.block_on(running.shutdown()).unwrap();
}

#[test]
fn compressed_e2e_with_a_json_payload_reports_its_wire_size() {
    let report = bench(&[
        "--embedded",
        "memory",
        "--mode",
        "e2e",
        "--concurrency",
        "2",
        "--payload-size",
        "16384",
        "--payload-kind",
        "json",
        "--compression",
        "zstd",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--baseline",
    ]);
    let settings = &report["settings"];
    assert_eq!(settings["compression"], "zstd", "{settings}");
    assert_eq!(settings["payload_kind"], "json", "{settings}");
    let wire = number(&settings["payload_wire_bytes"], "payload_wire_bytes");
    assert!(
        0.0 < wire && wire < 16384.0 / 2.0,
        "a JSON document compresses well: {wire} bytes"
    );
    check_row(&report["runs"][0]);
    check_row(&report["baseline"][0]);
}

/// The admin scenarios, briefly: ListQueues over tickets spread on queues
/// lists every one of them; a limited queue's workers never run more than
/// the cap at once. (The rate itself is a measurement, not checked here: a
/// two-second run on a shared machine may land outside 5 %.)
#[test]
fn the_queues_and_rate_limit_scenarios_report_what_they_measured() {
    let report = bench(&[
        "--embedded",
        "memory",
        "--mode",
        "queues",
        "--tickets",
        "500",
        "--queues",
        "7",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ]);
    let scenario = &report["scenarios"][0];
    assert_eq!(scenario["listed_queues"], 7, "{scenario}");
    assert_eq!(scenario["listed_pending"], 500, "{scenario}");
    assert_eq!(scenario["listed_all"], true, "{scenario}");
    let list = &scenario["list_queues"];
    assert!(number(&list["calls"], "calls") > 0.0, "{list}");
    assert!(
        number(&list["p50_ms"], "p50") <= number(&list["p99_ms"], "p99"),
        "{list}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_asyncgate"))
        .args([
            "bench",
            "--embedded",
            "memory",
            "--mode",
            "rate-limit",
            "--rate",
            "100",
            "--max-concurrent",
            "3",
            "--hold",
            "20ms",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--output",
            "json",
            "--quiet",
        ])
        .env_remove("ASYNCGATE_SERVER")
        .output()
        .expect("the asyncgate binary runs");
    // 0: the rate landed within 5 %; 1: it did not (timing), both report.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let scenario = &report["scenarios"][0];
    assert_eq!(scenario["cap_held"], true, "{scenario}");
    let peak = number(&scenario["peak_running_at_workers"], "peak");
    assert!((1.0..=3.0).contains(&peak), "{scenario}");
    // The cap (3 at once, 20 ms each: at most 150/s) and the rate (100/s)
    // both bound what is delivered; generously:
    let delivered = number(&scenario["delivered_per_second"], "delivered");
    assert!(delivered > 0.0 && delivered <= 150.0, "{scenario}");
}

/// The callbacks scenario delivers every ticket's end to its receiver.
#[test]
fn the_callbacks_scenario_delivers_every_end() {
    let report = bench(&[
        "--embedded",
        "memory",
        "--mode",
        "callbacks",
        "--tickets",
        "300",
    ]);
    let scenario = &report["scenarios"][0];
    assert_eq!(scenario["delivered"], 300, "{scenario}");
    assert_eq!(scenario["all_delivered"], true, "{scenario}");
    assert!(
        number(&scenario["deliveries_per_second"], "rate") > 0.0,
        "{scenario}"
    );
}
