//! The metrics the real `asyncgate-server` binary serves, scraped like
//! Prometheus does: every family has HELP and TYPE and every sample parses,
//! in the classic text format and in OpenMetrics (and, when `promtool` is on
//! PATH, `promtool check metrics` accepts the text); go-grpc-prometheus'
//! families with their `grpc_type`, started vs handled and per-message
//! counts; process metrics with sane values; the build info.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Child;

use asyncgate_client::{Client, Submit, pb};

mod common;
use common::{free_port, wait_until_serving};

/// The real binary with metrics on `127.0.0.1:<metrics port>`.
struct Gateway {
    child: Child,
    url: String,
    metrics_port: u16,
}

impl Gateway {
    async fn start() -> Gateway {
        let port = free_port();
        let metrics_port = free_port();
        let child = common::start_server(
            "memory",
            port,
            &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = Client::connect_lazy(url.clone()).expect("client");
        wait_until_serving(&client).await;
        Gateway {
            child,
            url,
            metrics_port,
        }
    }

    /// `GET /metrics` with `accept`: the response's content type and body.
    async fn scrape(&self, accept: Option<&str>) -> (String, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .expect("the metrics listener accepts");
        let accept = accept
            .map(|accept| format!("Accept: {accept}\r\n"))
            .unwrap_or_default();
        stream
            .write_all(
                format!(
                    "GET /metrics HTTP/1.1\r\nHost: gateway\r\n{accept}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let content_type = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_owned())
            })
            .expect("a content type");
        (content_type, body.to_owned())
    }
}

/// One parsed sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A family as declared by `# HELP` and `# TYPE`.
#[derive(Debug, Default)]
struct FamilyDecl {
    help: Option<String>,
    kind: Option<String>,
}

/// Parses `name{label="value",...} value` (labels optional), with the
/// exposition formats' escapes in label values.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!("bad metric name: {line}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        loop {
            let Some((at, c)) = chars.next() else {
                return Err(format!("unterminated labels: {line}"));
            };
            match c {
                '}' if key.is_empty() => {
                    rest = &inner[at + 1..];
                    break;
                }
                ',' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(format!("unquoted label value: {line}"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                other => return Err(format!("bad escape {other:?}: {line}")),
                            },
                            Some(c) => value.push(c),
                            None => return Err(format!("unterminated value: {line}")),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                _ => return Err(format!("bad label name: {line}")),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no value: {line}"))?;
    let value = match value.trim() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .map_err(|_| format!("bad value {number:?}: {line}"))?,
    };
    Ok((name.to_owned(), labels, value))
}

/// The sample names a family of `kind` may have in each format.
fn sample_names(family: &str, kind: &str, openmetrics: bool) -> Vec<String> {
    let with = |suffixes: &[&str]| {
        suffixes
            .iter()
            .map(|suffix| format!("{family}{suffix}"))
            .collect()
    };
    match (kind, openmetrics) {
        ("counter", true) => with(&["_total", "_created"]),
        ("histogram", _) => with(&["_bucket", "_sum", "_count", "_created"]),
        ("info", true) => with(&["_info"]),
        _ => with(&[""]),
    }
}

/// Checks an exposition the way a strict scraper reads it: every family is
/// declared once with a non-empty HELP before its samples, every sample
/// belongs to the family declared last and parses, no series repeats.
/// Returns the samples.
fn check_exposition(text: &str, openmetrics: bool) -> Vec<Sample> {
    let mut families: HashMap<String, FamilyDecl> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut samples = Vec::new();
    let mut series = BTreeSet::new();
    let mut lines = text.lines().peekable();
    let kinds: &[&str] = if openmetrics {
        &[
            "counter",
            "gauge",
            "histogram",
            "info",
            "summary",
            "stateset",
            "gaugehistogram",
            "unknown",
        ]
    } else {
        &["counter", "gauge", "histogram", "summary", "untyped"]
    };
    while let Some(line) = lines.next() {
        if openmetrics && line == "# EOF" {
            assert!(lines.peek().is_none(), "text after # EOF");
            break;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let decl = families.entry(name.to_owned()).or_default();
            assert!(decl.help.is_none(), "HELP twice for {name}");
            decl.help = Some(help.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE names a kind");
            assert!(kinds.contains(&kind), "unknown type {kind} for {name}");
            let decl = families.entry(name.to_owned()).or_default();
            assert!(decl.kind.is_none(), "TYPE twice for {name}");
            decl.kind = Some(kind.to_owned());
            current = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            assert!(openmetrics, "UNIT in the classic format: {line}");
            let (name, unit) = rest.split_once(' ').expect("UNIT names a unit");
            assert!(name.ends_with(&format!("_{unit}")), "{line}");
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        assert!(!line.trim().is_empty(), "empty line in the exposition");
        let sample = parse_sample(line).unwrap_or_else(|error| panic!("{error}"));
        let (family, kind) = current
            .as_ref()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
        assert!(
            sample_names(family, kind, openmetrics).contains(&sample.0),
            "{} does not belong to {kind} family {family}",
            sample.0
        );
        let mut key = sample.1.clone();
        key.sort();
        assert!(
            series.insert(format!("{}{key:?}", sample.0)),
            "series twice: {line}"
        );
        samples.push(sample);
    }
    if openmetrics {
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    }
    for (name, decl) in &families {
        assert!(decl.kind.is_some(), "{name} has HELP but no TYPE");
        let help = decl.help.as_deref().unwrap_or_default();
        assert!(!help.trim().is_empty(), "{name} has no HELP text");
    }
    samples
}

/// The value of the series `name` whose labels include all of `labels`,
/// summed when several match.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[tokio::test]
async fn every_family_has_help_and_the_exposition_parses_in_both_formats() {
    let gateway = Gateway::start().await;
    let client = Client::connect_lazy(gateway.url.clone()).expect("client");
    let ticket = client
        .submit(Submit::new("described").build())
        .await
        .expect("submit");
    client.cancel(&ticket.id, "done").await.expect("cancel");

    let (content_type, text) = gateway.scrape(None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let samples = check_exposition(&text, false);
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    for family in [
        "asyncgate_tickets_submitted_total",
        "asyncgate_tickets_completed_total",
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "grpc_server_handling_seconds",
        "process_cpu_seconds_total",
        "asyncgate_build_info",
    ] {
        assert!(families.contains(family), "{family} in {families:?}");
    }
    assert_eq!(
        value(
            &samples,
            "asyncgate_tickets_submitted_total",
            &[("queue", "described")]
        ),
        Some(1.0)
    );

    // What Prometheus sends.
    let (content_type, openmetrics) = gateway
        .scrape(Some("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"))
        .await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om_samples = check_exposition(&openmetrics, true);
    assert_eq!(
        om_samples.len(),
        samples.len(),
        "both formats carry the same samples"
    );

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            use std::io::Write as _;
            promtool
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let output = promtool.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(error) => eprintln!("promtool not run ({error}); the checks above stand in for it"),
    }
}

#[tokio::test]
async fn grpc_metrics_match_go_grpc_prometheus() {
    let gateway = Gateway::start().await;
    let channel = tonic::transport::Endpoint::from_shared(gateway.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut gateway_client = pb::gateway_client::GatewayClient::new(channel.clone());

    // Unary: a submit and a cancel (nothing serves the queue).
    let ticket = gateway_client
        .submit(pb::SubmitRequest {
            queue: "unserved".into(),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    gateway_client
        .cancel_ticket(pb::CancelTicketRequest {
            id: ticket.id.clone(),
            reason: "not needed".into(),
        })
        .await
        .expect("cancel");

    // Server streaming: watching a finished ticket sends its events, then
    // ends.
    let mut watch = gateway_client
        .watch_ticket(pb::WatchTicketRequest {
            id: ticket.id.clone(),
            after_seq: None,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = 0.0;
    while tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the watch ends")
        .expect("the watch ends well")
        .is_some()
    {
        events += 1.0;
    }
    assert!(events >= 1.0);

    // Bidi streaming: a worker says hello, is welcomed, and leaves.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            worker_name: "metered".into(),
            queues: vec!["work".into()],
            max_in_flight: 1,
            batches: false,
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut inbound = pb::workers_client::WorkersClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("Connect opens")
        .into_inner();
    let welcome = inbound
        .message()
        .await
        .expect("a message")
        .expect("Welcome");
    assert!(matches!(
        welcome.kind,
        Some(pb::dispatch_message::Kind::Welcome(_))
    ));
    drop(tx);
    // The gateway ends the stream once the worker's side is closed.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(30), inbound.message())
        .await
        .expect("the session ends")
    {}

    const GATEWAY: &str = "asyncgate.v1.Gateway";
    let method = |kind: &'static str, service: &'static str, name: &'static str| {
        [
            ("grpc_type", kind),
            ("grpc_service", service),
            ("grpc_method", name),
        ]
    };
    let submit = method("unary", GATEWAY, "Submit");
    let cancel = method("unary", GATEWAY, "CancelTicket");
    let watch = method("server_stream", GATEWAY, "WatchTicket");
    let connect = method("bidi_stream", "asyncgate.v1.Workers", "Connect");
    // A call is handled when its response ends, which can trail what the
    // client saw by a moment: scrape until the last one is in.
    let mut samples = Vec::new();
    for _ in 0..200 {
        let (_, text) = gateway.scrape(None).await;
        samples = check_exposition(&text, false);
        if value(&samples, "grpc_server_handled_total", &connect) == Some(1.0)
            && value(&samples, "grpc_server_handled_total", &watch) == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} is exposed"))
    };
    for (labels, received, sent) in [
        (&submit, 1.0, 1.0),
        (&cancel, 1.0, 1.0),
        (&watch, 1.0, events),
    ] {
        assert_eq!(get("grpc_server_started_total", labels), 1.0, "{labels:?}");
        let mut ok = labels.to_vec();
        ok.push(("grpc_code", "OK"));
        assert_eq!(get("grpc_server_handled_total", &ok), 1.0, "{labels:?}");
        assert_eq!(get("grpc_server_handled_total", labels), 1.0, "{labels:?}");
        assert_eq!(
            get("grpc_server_msg_received_total", labels),
            received,
            "{labels:?}"
        );
        assert_eq!(
            get("grpc_server_msg_sent_total", labels),
            sent,
            "{labels:?}"
        );
        assert_eq!(
            get("grpc_server_handling_seconds_count", labels),
            1.0,
            "{labels:?}"
        );
    }
    assert_eq!(get("grpc_server_started_total", &connect), 1.0);
    assert_eq!(get("grpc_server_handled_total", &connect), 1.0);
    assert!(
        get("grpc_server_msg_received_total", &connect) >= 1.0,
        "the Hello"
    );
    assert!(
        get("grpc_server_msg_sent_total", &connect) >= 1.0,
        "the Welcome"
    );

    // Every served method is there from the start, at zero, with every
    // code (as go-grpc-prometheus' InitializeMetrics).
    let get_ticket = method("unary", GATEWAY, "GetTicket");
    assert_eq!(get("grpc_server_started_total", &get_ticket), 0.0);
    let mut data_loss = get_ticket.to_vec();
    data_loss.push(("grpc_code", "DataLoss"));
    assert_eq!(get("grpc_server_handled_total", &data_loss), 0.0);
    assert_eq!(
        get(
            "grpc_server_started_total",
            &method("server_stream", "grpc.health.v1.Health", "Watch")
        ),
        0.0
    );
    let codes: BTreeSet<&str> = samples
        .iter()
        .filter(|(name, labels, _)| {
            name == "grpc_server_handled_total"
                && labels
                    .iter()
                    .any(|(k, v)| k == "grpc_method" && v == "GetTicket")
        })
        .flat_map(|(_, labels, _)| labels.iter())
        .filter(|(k, _)| k == "grpc_code")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(codes.len(), 17, "{codes:?}");
    for (_, labels, _) in &samples {
        if let Some((_, kind)) = labels.iter().find(|(k, _)| k == "grpc_type") {
            assert!(
                ["unary", "client_stream", "server_stream", "bidi_stream"].contains(&kind.as_str()),
                "{labels:?}"
            );
        }
    }
    // Prometheus' default buckets.
    let buckets: Vec<&str> = samples
        .iter()
        .filter(|(name, labels, _)| {
            name == "grpc_server_handling_seconds_bucket"
                && labels
                    .iter()
                    .any(|(k, v)| k == "grpc_method" && v == "Submit")
        })
        .filter_map(|(_, labels, _)| labels.iter().find(|(k, _)| k == "le"))
        .map(|(_, le)| le.as_str())
        .collect();
    assert_eq!(
        buckets,
        [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
            "+Inf"
        ]
    );
}

#[tokio::test]
async fn process_metrics_and_build_info_are_sane() {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let gateway = Gateway::start().await;
    let (_, text) = gateway.scrape(None).await;
    let samples = check_exposition(&text, false);
    let get = |name: &str| value(&samples, name, &[]).unwrap_or_else(|| panic!("{name} exposed"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = get("process_start_time_seconds");
    // /proc's start time has clock-tick resolution, the boot time whole
    // seconds.
    assert!(
        started >= before - 2.0 && started <= now + 1.0,
        "{before} <= {started} <= {now}"
    );
    let cpu = get("process_cpu_seconds_total");
    assert!(cpu > 0.0 && cpu < 60.0, "{cpu}");
    let resident = get("process_resident_memory_bytes");
    let measured = common::rss(gateway.child.id().expect("running")) as f64;
    assert!(
        resident > 1e6 && resident < 2.0 * measured + 1e7 && resident > measured / 2.0,
        "{resident} vs {measured} from /proc"
    );
    assert!(get("process_virtual_memory_bytes") >= resident);
    let open = get("process_open_fds");
    let max = get("process_max_fds");
    assert!(open >= 5.0 && open < max, "{open} of {max}");

    let features = if cfg!(feature = "otel") {
        "otel"
    } else {
        "none"
    };
    assert_eq!(
        value(
            &samples,
            "asyncgate_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("features", features)
            ]
        ),
        Some(1.0),
        "{text}"
    );
}
