//! With the `otel` feature: each attempt's span is parented, in
//! OpenTelemetry, on the trace context the ticket's submitter sent, so a
//! worker that exports its spans (tracing-opentelemetry) continues the
//! submitter's trace instead of starting one of its own.

use crate::worker::TraceParent;

/// Without the `otel` feature there is nothing to parent: spans carry the
/// trace as fields only.
#[cfg(not(feature = "otel"))]
pub(crate) fn continue_trace(
    _span: &tracing::Span,
    _trace: TraceParent,
    _tracestate: Option<&str>,
) -> Option<u64> {
    None
}

/// Parents `span` on `trace` (and its vendor `tracestate`), before the span
/// is first entered; returns the span's own exported id, when spans are
/// exported.
#[cfg(feature = "otel")]
pub(crate) fn continue_trace(
    span: &tracing::Span,
    trace: TraceParent,
    tracestate: Option<&str>,
) -> Option<u64> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let remote = SpanContext::new(
        TraceId::from(trace.trace_id),
        SpanId::from(trace.parent_id),
        TraceFlags::new(trace.flags),
        true,
        tracestate
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default(),
    );
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
        .ok()?;
    let own = span.context().span().span_context().span_id();
    (own != SpanId::INVALID).then(|| u64::from_be_bytes(own.to_bytes()))
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Keeps exported spans in memory.
    #[derive(Debug, Clone, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn an_attempts_span_continues_the_submitters_trace() {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let caller = crate::worker::TraceParent::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        let mut own = None;
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("task");
            own = super::continue_trace(&span, caller, Some("vendor=opaque"));
            let _entered = span.enter();
        });
        provider.force_flush().unwrap();
        let spans = collected.0.lock().unwrap();
        let task = spans.iter().find(|s| s.name == "task").expect("exported");
        assert_eq!(
            task.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(task.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(
            task.span_context.trace_state().get("vendor"),
            Some("opaque")
        );
        assert_eq!(
            own.map(|id| format!("{id:016x}")),
            Some(task.span_context.span_id().to_string()),
            "calls from the handler name the exported span as their parent"
        );
    }
}
