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

/// Parents the current span on the W3C trace context of a request's
/// headers, so exported spans continue the caller's trace.
pub fn continue_trace(_headers: &tonic::metadata::MetadataMap) {
    #[cfg(feature = "otel")]
    otel::continue_trace(_headers);
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

    pub(super) fn continue_trace(headers: &tonic::metadata::MetadataMap) {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(headers))
        });
        let _ = tracing::Span::current().set_parent(parent);
    }
}
