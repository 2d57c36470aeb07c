//! Trace context across the async hop: a caller's W3C `traceparent` is kept
//! with the ticket, handed to the worker with the task, and continued by the
//! worker SDK's span; spans are captured in-process (no collector).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{payload, pb};
use asyncgate_tests::{TestGateway, as_json, finished, json};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A span's name and its fields, as recorded.
type SpanRecord = (String, HashMap<String, String>);

/// Every span, as recorded.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<SpanRecord>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for Captured
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        fields.insert("#id".into(), id.into_u64().to_string());
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, fields)) = spans
            .iter_mut()
            .rev()
            .find(|(_, f)| f.get("#id") == Some(&id.into_u64().to_string()))
        {
            values.record(&mut Fields(fields));
        }
    }
}

impl Captured {
    fn spans_named(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

// One thread, so the scoped subscriber sees the gateway's and the worker's
// spans alike.
#[tokio::test(flavor = "current_thread")]
async fn a_callers_trace_runs_through_the_queue_into_the_worker() {
    let captured = Captured::default();
    let _scope =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let gateway = TestGateway::start().await;
    let worker = gateway.spawn_worker(
        "traced",
        handler_fn(|task: TaskContext| async move {
            let trace = task.trace_parent();
            Ok(payload::json(serde_json::json!({
                "trace_id": trace.map(|t| t.trace_id_hex()),
                "parent": trace.map(|t| format!("{:016x}", t.parent_id)),
                "for_calls": task.traceparent_for_calls(),
            })))
        }),
    );
    let client = gateway.client().await;
    let mut request = tonic::Request::new(pb::SubmitRequest {
        queue: "traced".into(),
        payload: Some(json("hi".into())),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", CALLER.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    let ticket = client.raw().submit(request).await.unwrap().into_inner();
    assert_eq!(
        ticket.metadata.get("traceparent").map(String::as_str),
        Some(CALLER)
    );
    assert_eq!(
        ticket.metadata.get("tracestate").map(String::as_str),
        Some("vendor=opaque")
    );

    let done = finished(&client, &ticket.id).await;
    let seen = as_json(done.result.as_ref());
    assert_eq!(seen["trace_id"], TRACE_ID);
    assert_eq!(seen["parent"], "00f067aa0ba902b7");
    let for_calls = seen["for_calls"].as_str().unwrap();
    let child = asyncgate_client::worker::TraceParent::parse(for_calls).unwrap();
    assert_eq!(child.trace_id_hex(), TRACE_ID, "calls stay in the trace");
    assert_ne!(
        child.parent_id, 0x00f0_67aa_0ba9_02b7,
        "as children of the attempt"
    );

    let submits = captured.spans_named("submit");
    assert!(
        submits
            .iter()
            .any(|f| f.get("trace_id").map(String::as_str) == Some(TRACE_ID)),
        "the gateway's submit span joins the trace: {submits:?}"
    );
    let tasks = captured.spans_named("task");
    let task = tasks
        .iter()
        .find(|f| f.get("ticket_id") == Some(&ticket.id))
        .expect("the worker SDK opened a span for the attempt");
    assert_eq!(task.get("trace_id").map(String::as_str), Some(TRACE_ID));
    assert_eq!(
        task.get("parent_span_id").map(String::as_str),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(
        task.get("span_id"),
        Some(&format!("{:016x}", child.parent_id)),
        "the span passes its own id on"
    );
    worker.shutdown();
}

#[tokio::test]
async fn an_invalid_traceparent_is_ignored() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut request = tonic::Request::new(pb::SubmitRequest {
        queue: "untraced".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", "00-not-a-trace-01".parse().unwrap());
    let ticket = client.raw().submit(request).await.unwrap().into_inner();
    assert!(!ticket.metadata.contains_key("traceparent"), "{ticket:?}");
}
