//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text for people or one JSON object per line for log pipelines; with
//! the `otel` feature, spans also go to an OpenTelemetry collector over OTLP
//! (`--otlp-endpoint`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

/// Keeps span export running; flushes what is buffered when dropped.
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber (harmless if one is already installed);
/// with `otlp_endpoint`, spans are exported there too.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().with_current_span(false).boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    match otlp_endpoint {
        None => {
            let _ = registry.try_init();
            Ok(Telemetry::default())
        }
        #[cfg(feature = "otel")]
        Some(endpoint) => {
            let (layer, provider) = otel::layer(endpoint)?;
            let _ = registry.with(layer).try_init();
            Ok(Telemetry {
                provider: Some(provider),
            })
        }
        #[cfg(not(feature = "otel"))]
        Some(_) => Err(
            "--otlp-endpoint needs a build with OpenTelemetry: cargo build --release -p asyncgate-server --features otel"
                .into(),
        ),
    }
}

use tracing_subscriber::Layer as _;

/// Parents `span` on the W3C trace context of a request's headers, so
/// exported spans continue the caller's trace. Call before the span is first
/// entered (entering starts its OpenTelemetry context).
pub fn continue_trace(_span: &tracing::Span, _headers: &tonic::metadata::MetadataMap) {
    #[cfg(feature = "otel")]
    otel::continue_trace(_span, _headers);
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::propagation::Extractor;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    pub(super) fn layer<S>(
        endpoint: &str,
    ) -> Result<(impl tracing_subscriber::Layer<S>, SdkTracerProvider), String>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("asyncgate")
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let tracer = provider.tracer("asyncgate");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }

    struct Headers<'a>(&'a tonic::metadata::MetadataMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|key| match key {
                    tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                    tonic::metadata::KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }

    pub(super) fn continue_trace(span: &tracing::Span, headers: &tonic::metadata::MetadataMap) {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(headers))
        });
        let _ = span.set_parent(parent);
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Keeps exported spans in memory (no collector in tests).
    #[derive(Debug, Clone, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn an_exported_span_continues_the_callers_trace() {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("submit");
            let mut headers = tonic::metadata::MetadataMap::new();
            headers.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            super::continue_trace(&span, &headers);
            let _entered = span.enter();
        });
        provider.force_flush().unwrap();
        let spans = collected.0.lock().unwrap();
        let submit = spans
            .iter()
            .find(|span| span.name == "submit")
            .expect("the span was exported");
        assert_eq!(
            submit.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(submit.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(submit.parent_span_is_remote);
    }
}
