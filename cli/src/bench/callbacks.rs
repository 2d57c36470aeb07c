//! The callbacks scenario: `--tickets` tickets submitted with an HTTP
//! callback to a receiver in this process (plain HTTP on loopback, which
//! the embedded gateway is told to allow, and signed), none run; then one
//! purge ends them all, and every end is delivered. Reported: deliveries
//! per second from the first to the last, and the CPU per delivery (the
//! process's: gateway, receiver and clients) while they are made.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::args::Settings;
use super::scale::{MakeRequest, Scenario, stop_ticker, submit_made, ticker, wait_for_count};
use super::target::{Gateway, admin_client, connect, fresh_queue, submit_request};

/// The secret the embedded gateway signs with (a bench's, not a real one).
pub(crate) const BENCH_SECRET: &str = "whsec_YmVuY2gtY2FsbGJhY2stc2VjcmV0LTMyYnl0ZXMh";

/// The callback settings of an embedded gateway in this mode.
pub(crate) fn settings() -> asyncgate_server::callbacks::CallbackSettings {
    asyncgate_server::callbacks::CallbackSettings {
        allow: vec![asyncgate_server::callbacks::parse_allowed("127.0.0.1").expect("an address")],
        allow_http: true,
        secrets: vec![asyncgate_server::callbacks::parse_secret(BENCH_SECRET).expect("a secret")],
        ..Default::default()
    }
}

/// Counts the deliveries it answers 200, with the times of the first and
/// the last.
#[derive(Default)]
struct Receiver {
    delivered: Arc<AtomicU64>,
    first_last: Mutex<Option<(Instant, Instant)>>,
}

async fn receive(receiver: Arc<Receiver>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the callback receiver")?;
    let url = format!("http://{}/delivered", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let receiver = receiver.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let receiver = receiver.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        let now = Instant::now();
                        {
                            let mut span = receiver
                                .first_last
                                .lock()
                                .unwrap_or_else(|p| p.into_inner());
                            let (first, _) = span.unwrap_or((now, now));
                            *span = Some((first, now));
                        }
                        receiver.delivered.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    Ok(url)
}

/// Runs the scenario against `gateway`.
pub(crate) async fn run(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    let total = settings.tickets;
    let queue = fresh_queue("callbacks");
    let receiver = Arc::new(Receiver::default());
    let url = receive(receiver.clone()).await?;
    let channels = connect(&gateway.url, settings.connections).await?;
    let mut template = submit_request(
        &queue,
        super::payload(settings.payload_size, settings.payload_kind),
    );
    template.callback = url;
    let make: MakeRequest = Arc::new(move |_| template.clone());
    let deadline = Instant::now() + settings.time_limit;
    let label = format!("callbacks submit [{}]", gateway.store);
    let submitted = submit_made(settings, label, &channels, make, total, None, deadline).await;
    let cpu_start = gateway.rss.cpu();
    // Every ticket ends at once (a purge cancels them): what follows is the
    // deliveries alone, not the tickets' runs.
    let mut admin = admin_client(&channels[0]);
    admin
        .purge_queue(asyncgate_client::pb::PurgeQueueRequest {
            name: queue.clone(),
            ..Default::default()
        })
        .await
        .context("purging the queue to end its tickets")?;
    let progress = ticker(
        settings,
        format!("callbacks delivered [{}]", gateway.store),
        receiver.delivered.clone(),
        submitted.accepted,
    );
    let done = wait_for_count(
        &receiver.delivered,
        submitted.accepted,
        Instant::now() + settings.time_limit,
    )
    .await;
    stop_ticker(progress);
    let cpu_end = gateway.rss.cpu();
    drop(channels);

    let delivered = receiver.delivered.load(Ordering::Relaxed);
    let span = *receiver
        .first_last
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let seconds = span.map_or(0.0, |(first, last)| (last - first).as_secs_f64());
    let per_second = if seconds > 0.0 {
        delivered as f64 / seconds
    } else {
        0.0
    };
    let cpu_per = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) if delivered > 0 => {
            json!(((b - a).as_secs_f64() * 1e6 / delivered as f64 * 10.0).round() / 10.0)
        }
        _ => serde_json::Value::Null,
    };
    let json = json!({
        "mode": "callbacks",
        "store": gateway.store,
        "tickets": total,
        "submit": submitted.json(None),
        "delivered": delivered,
        "all_delivered": done.is_some(),
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "deliveries_per_second": per_second.round(),
        "cpu_us_per_delivery": cpu_per,
    });
    let text = format!(
        "callbacks [{}]: {} tickets; {delivered} delivered (all: {}) in {seconds:.2} s from the first to the last: {per_second:.0} deliveries/s; process CPU {} µs per delivery\n",
        gateway.store,
        submitted.accepted,
        done.is_some(),
        cpu_per.as_f64().map_or("?".into(), |c| format!("{c:.1}")),
    );
    Ok(Scenario {
        passed: done.is_some() && submitted.accepted == total,
        json,
        text,
    })
}
