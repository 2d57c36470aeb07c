//! The delayed-tickets scenario: `--tickets` tickets submitted with no
//! worker needed yet, each with a `not_before` so that they come due at
//! `--rate` per second from a start far enough ahead for the submits to
//! finish first; the RSS they cost while pending; then how late each runs:
//! lateness = when the worker got it − its `not_before` (the time is carried
//! in the first 8 bytes of its payload).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use tokio::time::Instant;

use super::args::Settings;
use super::load::histogram;
use super::scale::{MakeRequest, Scenario, stop_ticker, submit_made, ticker, wait_for_count};
use super::target::{Fleet, Gateway, OnTask, connect, fresh_queue, submit_request};

/// Submits per second the lead assumes (slower stores still finish: the
/// lead is generous, and tickets submitted after their time are counted
/// apart, not measured).
const ASSUMED_SUBMIT_RATE: u64 = 15_000;

fn micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Runs the scenario against `gateway`.
pub(crate) async fn run(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    let total = settings.tickets;
    let rate = u64::from(settings.rate);
    let queue = fresh_queue("delayed");
    let channels = connect(&gateway.url, settings.connections).await?;
    let lead = Duration::from_secs(5 + total / ASSUMED_SUBMIT_RATE);
    let first_due = SystemTime::now() + lead;
    let body = super::payload(settings.payload_size, settings.payload_kind);
    let template = submit_request(&queue, body.clone());
    let make: MakeRequest = Arc::new(move |n| {
        let due = first_due + Duration::from_nanos(n * 1_000_000_000 / rate);
        let mut payload = BytesMut::with_capacity(body.len().max(8));
        payload.put_u64(micros(due));
        payload.extend_from_slice(&body[8.min(body.len())..]);
        let mut request = template.clone();
        request.payload = Some(asyncgate_client::payload::binary(Bytes::from(payload), ""));
        request.not_before = Some(due.into());
        request
    });
    let rss = gateway.rss;
    let rss_start = rss.read();
    let deadline = Instant::now() + settings.time_limit;
    let label = format!("delayed submit [{}]", gateway.store);
    let submitted = submit_made(settings, label, &channels, make, total, None, deadline).await;
    let rss_pending = rss.read();
    let submit_ended = SystemTime::now();

    // Workers record each ticket's lateness, once per ticket.
    let lateness = Arc::new(Mutex::new(histogram()));
    let seen = Arc::new(AtomicU64::new(0));
    let late_submits = Arc::new(AtomicU64::new(0));
    let on_task: OnTask = {
        let (lateness, seen, late_submits) = (lateness.clone(), seen.clone(), late_submits.clone());
        Arc::new(move |_, task| {
            let now = micros(SystemTime::now());
            let due = match task.payload().kind.as_ref() {
                Some(asyncgate_client::pb::payload::Kind::Binary(bytes)) if bytes.len() >= 8 => {
                    u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default())
                }
                _ => now,
            };
            if due <= micros(submit_ended) {
                // Due before the submits ended: maybe stored after its time.
                late_submits.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = lateness
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(now.saturating_sub(due).max(1));
            }
            seen.fetch_add(1, Ordering::Relaxed);
        })
    };
    let fleet = Fleet::start(
        &gateway.urls,
        &queue,
        settings.workers,
        settings.max_in_flight,
        Some(on_task),
        settings.time_limit,
    )
    .await?;
    let progress = ticker(
        settings,
        format!("delayed due [{}]", gateway.store),
        seen.clone(),
        submitted.accepted,
    );
    let last_due = first_due + Duration::from_nanos(total * 1_000_000_000 / rate.max(1));
    let wait = last_due
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + settings.time_limit;
    let done = wait_for_count(&seen, submitted.accepted, Instant::now() + wait).await;
    stop_ticker(progress);
    fleet.stop().await;
    drop(channels);

    let h = lateness.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ms = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 100.0).round() / 100.0;
    let per_ticket = match (rss_start, rss_pending) {
        (Some(a), Some(b)) if submitted.accepted > 0 => {
            json!((b.saturating_sub(a)) as f64 / submitted.accepted as f64)
        }
        _ => serde_json::Value::Null,
    };
    let late = late_submits.load(Ordering::Relaxed);
    let json = json!({
        "mode": "delayed",
        "store": gateway.store,
        "tickets": total,
        "rate": rate,
        "lead_s": lead.as_secs(),
        "submit": submitted.json(None),
        "rss_start_bytes": rss_start,
        "rss_pending_bytes": rss_pending,
        "rss_per_pending_ticket_bytes": per_ticket,
        "ran": seen.load(Ordering::Relaxed),
        "all_ran": done.is_some(),
        "due_before_submits_ended": late,
        "lateness_ms": {
            "measured": h.len(),
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
            "max": (h.max() as f64 / 10.0).round() / 100.0,
        },
    });
    let text = format!(
        "delayed [{}]: {} tickets submitted at {:.0}/s; RSS {} per pending ticket; due at {rate}/s: ran {} (all: {}); lateness p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms over {} tickets ({late} came due before the submits ended and are not measured)",
        gateway.store,
        submitted.accepted,
        json["submit"]["rate"].as_f64().unwrap_or_default(),
        per_ticket
            .as_f64()
            .map_or("?".into(), |b| format!("{:.0} B", b)),
        json["ran"],
        done.is_some(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        json["lateness_ms"]["max"],
        h.len(),
    );
    Ok(Scenario {
        passed: done.is_some() && submitted.accepted == total,
        json,
        text,
    })
}
