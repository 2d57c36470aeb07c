//! Unit tests of `config.rs` and its submodules (`config/`).

use clap::Parser;

use super::*;
use crate::domain::QueueLimits;

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["asyncgate-server"];
    argv.extend_from_slice(args);
    Config::try_from(Cli::try_parse_from(argv).map_err(|e| e.to_string())?)
}

/// The command line `asyncgate-server --config FILE EXTRA...`.
fn with_file(file: &std::path::Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        vec!["asyncgate-server".into(), "--config".into(), file.into()];
    args.extend(extra.iter().map(Into::into));
    args
}

#[test]
fn a_config_file_sits_between_the_environment_and_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncgate.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:6000\"\nstore = \"memory\"\nresult_retention = \"7d\"\ninsecure = false\n",
    )
    .unwrap();
    let args = |extra: &[&str]| with_file(&file, extra);
    let parsed = parse_args(args(&["--listen", "127.0.0.1:6001"])).unwrap();
    let config = Config::try_from(parsed.cli).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:6001", "the flag wins");
    assert_eq!(
        config.store,
        StoreConfig::Memory,
        "the file beats the default"
    );
    assert_eq!(
        config.engine.result_retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert!(
        parsed
            .effective
            .contains("store = \"memory\"  # config file")
    );
    assert!(
        parsed
            .effective
            .contains("listen = \"127.0.0.1:6001\"  # flag")
    );
    assert!(parsed.effective.contains("insecure = false  # default"));
    // What --print-config prints reads back as a config file.
    std::fs::write(&file, &parsed.effective).unwrap();
    assert!(parse_args(args(&[])).is_ok(), "{}", parsed.effective);

    // A list setting takes an array in the file, and every value is
    // printed back.
    std::fs::write(
        &file,
        "grpc-web = true\ncors-allow-origin = [\"https://a.example\", \"https://b.example\"]\nstore = \"memory\"\n",
    )
    .unwrap();
    let parsed = parse_args(args(&[])).unwrap();
    assert!(
        parsed.effective.contains(
            "cors-allow-origin = [\"https://a.example\", \"https://b.example\"]  # config file"
        ),
        "{}",
        parsed.effective
    );
    assert_eq!(
        Config::try_from(parsed.cli).unwrap().cors_allow_origins,
        ["https://a.example", "https://b.example"]
    );
    // Repeated flags too.
    let parsed = parse_args(args(&[
        "--cors-allow-origin",
        "https://c.example",
        "--cors-allow-origin",
        "https://d.example",
    ]))
    .unwrap();
    assert!(
        parsed
            .effective
            .contains("[\"https://c.example\", \"https://d.example\"]  # flag"),
        "{}",
        parsed.effective
    );
    std::fs::write(&file, &parsed.effective).unwrap();
    assert!(parse_args(args(&[])).is_ok(), "{}", parsed.effective);

    // The allowed headers are a list setting too.
    std::fs::write(
        &file,
        "grpc-web = true\ncors-allow-header = [\"x-request-id\", \"X-Tenant\"]\nstore = \"memory\"\n",
    )
    .unwrap();
    let parsed = parse_args(args(&[])).unwrap();
    assert!(
        parsed
            .effective
            .contains("cors-allow-header = [\"x-request-id\", \"X-Tenant\"]  # config file"),
        "{}",
        parsed.effective
    );
    assert_eq!(
        Config::try_from(parsed.cli).unwrap().cors_allow_headers,
        ["x-request-id", "x-tenant"]
    );
    let parsed = parse_args(args(&[
        "--cors-allow-header",
        "x-a",
        "--cors-allow-header",
        "x-b",
    ]))
    .unwrap();
    assert!(
        parsed
            .effective
            .contains("cors-allow-header = [\"x-a\", \"x-b\"]  # flag"),
        "{}",
        parsed.effective
    );

    std::fs::write(&file, "listne = \"x\"\n").unwrap();
    let error = parse_args(args(&[])).err().unwrap().to_string();
    assert!(error.contains("unknown setting \"listne\""), "{error}");
    assert_eq!(hide_password("redis://:secret@h:1/0"), "redis://***@h:1/0");
}

#[test]
fn durations_take_only_the_canonical_form() {
    let ok = |text: &str| parse_duration(text).ok();
    assert_eq!(ok("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(ok("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(ok("2m"), Some(Duration::from_secs(120)));
    assert_eq!(ok("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(ok("7d"), Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(ok("0s"), Some(Duration::ZERO));
    assert_eq!(ok("250us"), Some(Duration::from_micros(250)));
    assert_eq!(ok("1ns"), Some(Duration::from_nanos(1)));
    assert_eq!(ok(" 50s "), Some(Duration::from_secs(50)));
    assert_eq!(ok("0.000000001s"), Some(Duration::from_nanos(1)));
    for refused in [
        "",
        "10",
        "5 seconds",
        "5 s",
        "1min",
        "2days",
        "1M",
        "1y",
        "1w",
        "1h 30m",
        "s",
        ".5s",
        "1.s",
        "-1s",
        "1.2.3s",
        "99999999999999999999999d",
    ] {
        let error = parse_duration(refused).unwrap_err();
        assert!(error.contains("e.g. 500ms, 1.5s"), "{refused:?}: {error}");
    }
    // Through clap, the refusal names the flag.
    let error = parse(&["--lease-ttl", "1 minute"]).unwrap_err();
    assert!(error.contains("--lease-ttl"), "{error}");
    assert!(error.contains("\"1 minute\" is not a duration"), "{error}");
}

#[test]
fn sizes_take_units() {
    let size = |text: &str| parse_size(text);
    assert_eq!(size("4096"), Ok(4096), "a plain integer is bytes");
    assert_eq!(size("4MiB"), Ok(4 * 1024 * 1024));
    assert_eq!(size("4 MiB"), Ok(4 * 1024 * 1024));
    assert_eq!(size("4mib"), Ok(4 * 1024 * 1024));
    assert_eq!(size("4MB"), Ok(4_000_000), "MB is decimal");
    assert_eq!(size("64KiB"), Ok(65_536));
    assert_eq!(size("1.5KiB"), Ok(1536));
    assert_eq!(size("2GiB"), Ok(2 << 30));
    for bad in ["4XB", "", "-1", "1.5", "4 MiB extra", "MiB", "99999999EiB"] {
        let error = size(bad).unwrap_err();
        assert!(error.contains("KiB, MiB, GiB"), "{bad}: {error}");
    }
    for bytes in [0, 1, 1000, 1024, 1536, 4 << 20, 2 << 30, (1 << 40) + 1] {
        assert_eq!(
            size(&format_size(bytes)),
            Ok(bytes),
            "{}",
            format_size(bytes)
        );
    }
    assert_eq!(format_size(4 << 20), "4MiB");
    assert_eq!(format_size(1536), "1536");

    let config = parse(&[
        "--max-payload-bytes",
        "1MiB",
        "--max-pending-bytes",
        "3 GB",
        "--max-output-bytes-per-ticket",
        "65536",
        "--max-output-bytes",
        "2GiB",
    ])
    .unwrap();
    assert_eq!(config.max_payload_bytes, 1 << 20);
    assert_eq!(config.engine.max_pending_bytes, 3_000_000_000);
    assert_eq!(config.engine.max_output_bytes_per_ticket, 65_536);
    assert_eq!(config.engine.max_output_bytes, 2 << 30);
    let defaults = parse(&[]).unwrap();
    assert_eq!(defaults.max_payload_bytes, 4 << 20);
    assert_eq!(defaults.engine.max_pending_bytes, 2 << 30);
    assert_eq!(defaults.engine.max_output_bytes_per_ticket, 64 << 20);
    assert_eq!(defaults.engine.max_output_bytes, 1 << 30);

    // A bad unit: refused, naming the flag and the accepted forms.
    let error = parse(&["--max-payload-bytes", "4XB"]).unwrap_err();
    assert!(error.contains("--max-payload-bytes"), "{error}");
    assert!(error.contains("\"4XB\" is not a size"), "{error}");
    assert!(error.contains("e.g. 4MiB"), "{error}");
    // Range checks still apply, in the same terms.
    let error = parse(&["--max-payload-bytes", "65MiB"]).unwrap_err();
    assert!(error.contains("between 1 and 64MiB"), "{error}");
}

#[test]
fn size_keys_in_a_config_file_take_integers_or_units_and_print_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncgate.toml");
    let args = |extra: &[&str]| with_file(&file, extra);
    std::fs::write(
        &file,
        "store = \"memory\"\nmax-payload-bytes = 1048576\nmax-output-bytes-per-ticket = \"8 MiB\"\nmax_pending_bytes = \"1GB\"\n",
    )
    .unwrap();
    let parsed = parse_args(args(&["--max-output-bytes", "3GiB"])).unwrap();
    let effective = parsed.effective.clone();
    let config = Config::try_from(parsed.cli).unwrap();
    assert_eq!(config.max_payload_bytes, 1 << 20);
    assert_eq!(config.engine.max_output_bytes_per_ticket, 8 << 20);
    assert_eq!(config.engine.max_pending_bytes, 1_000_000_000);
    assert_eq!(config.engine.max_output_bytes, 3 << 30);
    for line in [
        "max-payload-bytes = \"1MiB\"  # config file",
        "max-output-bytes-per-ticket = \"8MiB\"  # config file",
        "max-pending-bytes = \"1000000000\"  # config file",
        "max-output-bytes = \"3GiB\"  # flag",
    ] {
        assert!(effective.contains(line), "{line}:\n{effective}");
    }
    // --print-config's output reads back to the same sizes.
    std::fs::write(&file, &effective).unwrap();
    let again = Config::try_from(parse_args(args(&[])).unwrap().cli).unwrap();
    assert_eq!(again.max_payload_bytes, config.max_payload_bytes);
    assert_eq!(
        again.engine.max_pending_bytes,
        config.engine.max_pending_bytes
    );
    assert_eq!(
        again.engine.max_output_bytes,
        config.engine.max_output_bytes
    );

    std::fs::write(&file, "max-payload-bytes = \"4 XB\"\n").unwrap();
    let error = parse_args(args(&[])).err().unwrap().to_string();
    assert!(error.contains("--max-payload-bytes"), "{error}");
    assert!(error.contains("is not a size"), "{error}");
}

#[test]
fn defaults_are_valid() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.max_wait, Duration::from_secs(50));
}

#[test]
fn refuses_inconsistent_settings() {
    // The budgets of this session's limits, each named in its refusal.
    assert!(
        parse(&["--max-pending-bytes", "1000"])
            .unwrap_err()
            .contains("--max-pending-bytes")
    );
    assert!(
        parse(&["--max-output-bytes", "10"])
            .unwrap_err()
            .contains("--max-output-bytes")
    );
    assert!(
        parse(&["--request-read-timeout", "0s"])
            .unwrap_err()
            .contains("--request-read-timeout")
    );
    let config = parse(&["--max-health-calls", "0", "--dispatch-stored-only"]).unwrap();
    assert_eq!(config.max_health_calls, 1, "at least one health call");
    assert!(config.engine.dispatch_stored_only);
    assert!(
        parse(&["--lease-ttl", "1s", "--heartbeat-interval", "1s"])
            .unwrap_err()
            .contains("twice")
    );
    assert_eq!(
        parse(&["--store", "redis://127.0.0.1:1/0"]).unwrap().store,
        StoreConfig::Redis("redis://127.0.0.1:1/0".into())
    );
    assert!(
        parse(&["--store", "redis://127.0.0.1:1/0", "--redis-prefix", "a{b}"])
            .unwrap_err()
            .contains("hash tags")
    );
    assert_eq!(
        parse(&["--store", "memory"]).unwrap().store,
        StoreConfig::Memory
    );
    assert_eq!(
        parse(&[]).unwrap().store,
        StoreConfig::Durable(PathBuf::from(DEFAULT_STORE))
    );
    assert!(parse(&["--heartbeat-interval", "soon"]).is_err());
    let error = parse(&["--grpc-web", "--cors-allow-header", "x-a: 1"]).unwrap_err();
    assert!(error.contains("--cors-allow-header \"x-a: 1\""), "{error}");
    assert!(error.contains("header name"), "{error}");
    assert!(
        parse(&["--cors-allow-header", "x-a"]).is_err(),
        "CORS needs --grpc-web"
    );
    assert!(
        parse(&["--listen", "0.0.0.0:50051"])
            .unwrap_err()
            .contains("--tls-cert")
    );
    assert!(parse(&["--listen", "0.0.0.0:50051", "--insecure"]).is_ok());
    assert!(
        parse(&["--tls-cert", "c.pem"]).is_err(),
        "a certificate needs its key"
    );
    let tls = parse(&[
        "--listen",
        "0.0.0.0:50051",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ])
    .unwrap();
    assert_eq!(tls.tls.unwrap().key, PathBuf::from("k.pem"));
}

#[test]
fn keys_without_tls_off_loopback_need_insecure() {
    let error = parse(&["--listen", "0.0.0.0:50051", "--keys", "keys.toml"]).unwrap_err();
    assert!(error.contains("API keys but no TLS"), "{error}");
    assert!(error.contains("in clear"), "{error}");
    assert!(error.contains("--insecure"), "{error}");
    assert!(
        parse(&["--listen", "0.0.0.0:50051", "--keys", "k", "--insecure"]).is_ok(),
        "a trusted proxy may terminate TLS"
    );
    assert!(
        parse(&["--keys", "keys.toml"]).is_ok(),
        "loopback traffic stays on the host"
    );
    assert!(
        parse(&[
            "--listen",
            "[::]:50051",
            "--keys",
            "k",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ])
        .is_ok()
    );
}

#[test]
fn metrics_off_loopback_need_tls_or_insecure() {
    let error = parse(&["--metrics-listen", "0.0.0.0:9464"]).unwrap_err();
    assert!(
        error.contains("refusing to serve metrics on 0.0.0.0:9464 without TLS"),
        "{error}"
    );
    assert!(error.contains("--insecure"), "{error}");
    // Keys do not help: a scrape's key would cross the network in clear.
    assert!(
        parse(&[
            "--metrics-listen",
            "10.0.0.1:9464",
            "--listen",
            "0.0.0.0:50051",
            "--keys",
            "k",
            "--insecure"
        ])
        .is_ok()
    );
    assert!(parse(&["--metrics-listen", "0.0.0.0:9464", "--keys", "k"]).is_err());
    assert!(parse(&["--metrics-listen", "0.0.0.0:9464", "--insecure"]).is_ok());
    assert!(parse(&["--metrics-listen", "[::1]:9464"]).is_ok());
    let tls = parse(&[
        "--metrics-listen",
        "0.0.0.0:9464",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ])
    .unwrap();
    assert_eq!(tls.metrics_listen.unwrap().to_string(), "0.0.0.0:9464");
}

#[test]
fn metrics_settings_have_documented_defaults() {
    let config = parse(&[]).unwrap();
    assert!(!config.metrics_public, "keys guard metrics by default");
    assert_eq!(config.metrics_max_queues, 500);
    let config = parse(&["--metrics-public", "--metrics-max-queues", "5"]).unwrap();
    assert!(config.metrics_public);
    assert_eq!(config.metrics_max_queues, 5);
    assert!(
        parse(&["--metrics-max-queues", "0"])
            .unwrap_err()
            .contains("at least 1")
    );
}

#[test]
fn the_dashboard_is_off_by_default_and_turns_on_grpc_web() {
    let config = parse(&[]).unwrap();
    assert!(!config.dashboard && !config.grpc_web);
    let config = parse(&["--dashboard"]).unwrap();
    assert!(config.dashboard);
    assert!(config.grpc_web, "the page calls over gRPC-Web");
    // A config file setting like any flag, printed back by --print-config.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncgate.toml");
    std::fs::write(&file, "dashboard = true\nstore = \"memory\"\n").unwrap();
    let parsed = parse_args(with_file(&file, &[])).unwrap();
    assert!(
        parsed.effective.contains("dashboard = true  # config file"),
        "{}",
        parsed.effective
    );
    let config = Config::try_from(parsed.cli).unwrap();
    assert!(config.dashboard && config.grpc_web);
}

#[test]
fn queue_limits_come_from_flags_or_queue_tables_in_the_file() {
    let config = parse(&[
        "--store",
        "memory",
        "--queue-limits",
        "emails:max_dispatch_per_second=500,burst=1000",
        "--queue-limits",
        "acme/reports:max_concurrent=20",
    ])
    .unwrap();
    let shown: Vec<(String, QueueLimits)> = config
        .queue_limits
        .iter()
        .map(|s| (s.queue.to_string(), s.limits))
        .collect();
    assert_eq!(
        shown,
        [
            (
                "emails".to_owned(),
                QueueLimits {
                    max_dispatch_per_second: 500,
                    burst: 1000,
                    max_concurrent: 0
                }
            ),
            (
                "acme/reports".to_owned(),
                QueueLimits {
                    max_concurrent: 20,
                    ..QueueLimits::default()
                }
            ),
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncgate.toml");
    let args = |extra: &[&str]| with_file(&file, extra);
    std::fs::write(
        &file,
        "store = \"memory\"\n[queues.fragile]\nmax_dispatch_per_second = 50\nmax_concurrent = 4\n[queues.\"acme/bulk\"]\nburst = 10\nmax_dispatch_per_second = 5\n",
    )
    .unwrap();
    let parsed = parse_args(args(&[])).unwrap();
    let effective = parsed.effective.clone();
    let config = Config::try_from(parsed.cli).unwrap();
    assert_eq!(config.queue_limits.len(), 2, "{:?}", config.queue_limits);
    let fragile = config
        .queue_limits
        .iter()
        .find(|s| s.queue.as_str() == "fragile")
        .unwrap();
    assert_eq!(
        fragile.limits,
        QueueLimits {
            max_dispatch_per_second: 50,
            burst: 0,
            max_concurrent: 4
        }
    );
    assert!(effective.contains("# config file"), "{effective}");
    // What --print-config prints reads back to the same limits.
    std::fs::write(&file, &effective).unwrap();
    let again = Config::try_from(parse_args(args(&[])).unwrap().cli).unwrap();
    assert_eq!(again.queue_limits, config.queue_limits);
    // A flag replaces the file's tables.
    std::fs::write(&file, "[queues.fragile]\nmax_concurrent = 4\n").unwrap();
    let flagged = parse_args(args(&["--queue-limits", "other:max_concurrent=1"])).unwrap();
    let flagged = Config::try_from(flagged.cli).unwrap();
    assert_eq!(flagged.queue_limits.len(), 1);
    assert_eq!(flagged.queue_limits[0].queue.as_str(), "other");

    // Each mistake names what to fix.
    for (value, expected) in [
        ("emails", "no ':'"),
        ("emails:rate=5", "unknown limit \"rate\""),
        ("emails:max_concurrent=-1", "not a whole number"),
        ("emails:max_dispatch_per_second=2000000", "at most 1000000"),
        ("emails:burst=10", "burst needs max_dispatch_per_second"),
        ("no spaces:max_concurrent=1", "queue:"),
    ] {
        let error = parse(&["--store", "memory", "--queue-limits", value]).unwrap_err();
        assert!(error.contains(expected), "{value}: {error}");
    }
    for (text, expected) in [
        ("queues = 5\n", "queues must be tables"),
        ("[queues]\nfragile = 3\n", "queues.fragile must be a table"),
        (
            "[queues.fragile]\nmax_concurrent = \"x\"\n",
            "queues.fragile.max_concurrent must be a whole number",
        ),
        (
            "[queues.fragile]\nconcurrency = 3\n",
            "unknown limit \"concurrency\"",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let error = parse_args(args(&[])).err().unwrap().to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
}
