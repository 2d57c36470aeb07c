//! Scenarios of the admin API under load: `ListQueues` over a deep backlog
//! spread on many queues (it must read per-queue counts, never scan
//! tickets), and a queue's dispatch limits over replicas (the delivered
//! rate, and the most tasks the workers ran at once).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use asyncgate_client::pb;
use serde_json::json;
use tokio::time::Instant;

use super::args::Settings;
use super::load::histogram;
use super::report::{bytes, round2};
use super::scale::{Scenario, submit_many};
use super::target::{
    Fleet, Gateway, Hold, OnTask, admin_client, connect, fresh_queue, submit_request,
};

/// Most ListQueues calls measured in one run.
const MAX_LIST_CALLS: u64 = 100_000;

fn ms(micros: u64) -> f64 {
    round2(micros as f64 / 1000.0)
}

/// Empties `queues` on a gateway that outlives the run (PurgeQueue).
async fn purge(settings: &Settings, channel: &tonic::transport::Channel, queues: &[String]) {
    if settings.embedded {
        return;
    }
    let mut admin = admin_client(channel);
    for queue in queues {
        let request = pb::PurgeQueueRequest {
            name: queue.clone(),
            ..Default::default()
        };
        if let Err(status) = admin.purge_queue(request).await {
            eprintln!("warning: could not purge bench queue {queue}: {status}");
        }
    }
}

/// `queues`: --tickets over --queues queues, then ListQueues for --duration.
pub(crate) async fn queues(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    let (count, total) = (settings.queues, settings.tickets);
    let prefix = fresh_queue("queues");
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:04}")).collect();
    let channels = connect(&gateway.url, settings.connections).await?;
    let rss_before = gateway.rss.read();
    let deadline = Instant::now() + settings.time_limit;
    let (mut attempted, mut accepted, mut completed) = (0, 0, true);
    let mut errors = BTreeMap::new();
    let submit_start = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let share = total / count as u64 + u64::from((i as u64) < total % count as u64);
        let request = submit_request(
            name,
            super::payload(settings.payload_size, settings.payload_kind),
        );
        let submitted = submit_many(
            settings,
            format!("queues submit [{}] {}/{count}", gateway.store, i + 1),
            &channels,
            &request,
            share,
            None,
            deadline,
        )
        .await;
        attempted += submitted.attempted;
        accepted += submitted.accepted;
        completed &= submitted.completed;
        for (key, n) in submitted.errors {
            *errors.entry(key).or_insert(0) += n;
        }
    }
    let submit_took = submit_start.elapsed();
    let rss_loaded = gateway.rss.read();

    let mut admin = admin_client(&channels[0]);
    let warm_until = Instant::now() + settings.warmup;
    while Instant::now() < warm_until {
        admin.list_queues(pb::ListQueuesRequest::default()).await?;
    }
    let mut latency = histogram();
    let mut last = None;
    let measure_until = Instant::now() + settings.duration;
    let mut calls = 0;
    while Instant::now() < measure_until && calls < MAX_LIST_CALLS {
        let start = Instant::now();
        let response = admin.list_queues(pb::ListQueuesRequest::default()).await?;
        latency.saturating_record(start.elapsed().as_micros() as u64);
        calls += 1;
        last = Some(response.into_inner());
    }
    let ours: Vec<pb::QueueInfo> = last
        .map(|r| r.queues)
        .unwrap_or_default()
        .into_iter()
        .filter(|q| q.name.starts_with(&prefix))
        .collect();
    let listed_pending: u64 = ours
        .iter()
        .map(|q| q.counts.unwrap_or_default().pending)
        .sum();
    let listed_ok = ours.len() == count && listed_pending == accepted;
    let rss_after = gateway.rss.read();
    purge(settings, &channels[0], &names).await;

    let quantile = |q: f64| ms(latency.value_at_quantile(q));
    let json = json!({
        "mode": "queues",
        "store": gateway.store,
        "queues": count,
        "tickets": total,
        "concurrency": settings.concurrency[0],
        "submit": {
            "attempted": attempted,
            "accepted": accepted,
            "errors": errors,
            "seconds": round2(submit_took.as_secs_f64()),
            "completed": completed,
        },
        "list_queues": {
            "calls": calls,
            "p50_ms": quantile(0.5),
            "p90_ms": quantile(0.9),
            "p99_ms": quantile(0.99),
            "max_ms": ms(latency.max()),
        },
        "listed_queues": ours.len(),
        "listed_pending": listed_pending,
        "listed_all": listed_ok,
        "rss_bytes_before": rss_before,
        "rss_bytes_loaded": rss_loaded,
        "rss_bytes_after": rss_after,
        "rss_source": gateway.rss.label(),
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "queues [{}]: {accepted} of {total} tickets pending over {count} queues (submitted in {:.1}s)",
        gateway.store,
        submit_took.as_secs_f64()
    );
    let _ = writeln!(
        text,
        "  ListQueues x{calls}: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; listed {} queues, {listed_pending} pending: {}",
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        ms(latency.max()),
        ours.len(),
        if listed_ok { "all" } else { "NOT ALL" }
    );
    let _ = writeln!(
        text,
        "  rss {} -> {} loaded -> {} after",
        bytes(rss_before),
        bytes(rss_loaded),
        bytes(rss_after)
    );
    Ok(Scenario {
        json,
        text,
        passed: listed_ok && completed && errors.is_empty(),
    })
}

/// `rate-limit`: a limited queue kept full, served by holding workers.
pub(crate) async fn rate_limit(settings: &Settings, gateway: &Gateway) -> anyhow::Result<Scenario> {
    let queue = fresh_queue("rate-limit");
    let channels = connect(&gateway.url, settings.connections).await?;
    let mut admin = admin_client(&channels[0]);
    let limits = pb::QueueLimits {
        max_dispatch_per_second: settings.rate,
        burst: 0,
        max_concurrent: settings.max_concurrent,
    };
    // Enough for the whole run and a fifth more, so the queue never runs dry.
    let run = settings.warmup + settings.duration;
    let backlog = (f64::from(settings.rate) * run.as_secs_f64() * 1.2).ceil() as u64 + 100;
    let request = submit_request(
        &queue,
        super::payload(settings.payload_size, settings.payload_kind),
    );
    let submitted = submit_many(
        settings,
        format!("rate-limit fill [{}]", gateway.store),
        &channels,
        &request,
        backlog,
        None,
        Instant::now() + settings.time_limit,
    )
    .await;

    // Limits apply to a queue that exists: set once it holds the backlog.
    admin
        .set_queue_limits(pb::SetQueueLimitsRequest {
            name: queue.clone(),
            limits: Some(limits),
        })
        .await?;
    let started = Arc::new(AtomicU64::new(0));
    let on_task: OnTask = {
        let started = started.clone();
        Arc::new(move |_, _| {
            started.fetch_add(1, Ordering::Relaxed);
        })
    };
    let hold = Hold {
        time: settings.hold,
        running: Arc::default(),
        peak: Arc::default(),
    };
    let fleet = Fleet::start_holding(
        &gateway.urls,
        &queue,
        settings.workers,
        settings.max_in_flight,
        Some(on_task),
        Some(hold.clone()),
        settings.time_limit,
    )
    .await?;
    tokio::time::sleep(settings.warmup).await;
    let from = (Instant::now(), started.load(Ordering::Relaxed));
    let mut per_second = Vec::new();
    let mut ticks =
        tokio::time::interval_at(from.0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut previous = from.1;
    let end = from.0 + settings.duration;
    while Instant::now() + Duration::from_secs(1) <= end + Duration::from_millis(5) {
        ticks.tick().await;
        let now = started.load(Ordering::Relaxed);
        per_second.push(now - previous);
        previous = now;
        if settings.progress {
            eprintln!(
                "rate-limit [{}]: {}/s, {} running",
                gateway.store,
                per_second.last().unwrap(),
                hold.running.load(Ordering::Relaxed)
            );
        }
    }
    let to = (Instant::now(), started.load(Ordering::Relaxed));
    fleet.stop().await;
    purge(settings, &channels[0], std::slice::from_ref(&queue)).await;

    let took = to.0 - from.0;
    let delivered = (to.1 - from.1) as f64 / took.as_secs_f64();
    let ratio = delivered / f64::from(settings.rate);
    let peak = hold.peak.load(Ordering::Relaxed);
    let within_rate = (0.95..=1.05).contains(&ratio);
    let within_cap = settings.max_concurrent == 0 || peak <= u64::from(settings.max_concurrent);
    let json = json!({
        "mode": "rate-limit",
        "store": gateway.store,
        "rate": settings.rate,
        "max_concurrent": settings.max_concurrent,
        "workers": settings.workers,
        "max_in_flight": settings.max_in_flight,
        "hold_ms": settings.hold.as_millis() as u64,
        "submitted": submitted.accepted,
        "seconds": round2(took.as_secs_f64()),
        "delivered_per_second": round2(delivered),
        "delivered_ratio": round2(ratio),
        "per_second_min": per_second.iter().min(),
        "per_second_max": per_second.iter().max(),
        "peak_running_at_workers": peak,
        "rate_within_5_percent": within_rate,
        "cap_held": within_cap,
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "rate-limit [{}]: limit {}/s, max_concurrent {}, {} workers x {} in flight holding {:?}",
        gateway.store,
        settings.rate,
        settings.max_concurrent,
        settings.workers,
        settings.max_in_flight,
        settings.hold
    );
    let _ = writeln!(
        text,
        "  delivered {delivered:.1}/s over {:.1}s ({:.3} of the limit: {}); per second min {} max {}",
        took.as_secs_f64(),
        ratio,
        if within_rate {
            "within 5%"
        } else {
            "OFF BY MORE THAN 5%"
        },
        per_second.iter().min().unwrap_or(&0),
        per_second.iter().max().unwrap_or(&0)
    );
    let _ = writeln!(
        text,
        "  most tasks running at once at the workers: {peak} ({})",
        if within_cap {
            "cap held"
        } else {
            "CAP EXCEEDED"
        }
    );
    Ok(Scenario {
        json,
        text,
        passed: within_rate && within_cap && submitted.errors.is_empty(),
    })
}
