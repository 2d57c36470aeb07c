//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text for people or one JSON object per line for log pipelines; with
//! the `otel` feature, spans also go to an OpenTelemetry collector over OTLP
//! (gRPC or HTTP/protobuf, TLS to `https` endpoints), configured by the
//! standard `OTEL_*` variables or the `--otlp-*` flags ([`otlp`]).
//!
//! Invariant: a text log line is one line. Field values carry client text
//! (names, reasons, messages), so every field of events and spans is
//! written through [`EscapedFields`], which writes control characters as
//! `\u{..}` escapes: no value can end the line, forge the next one, or send
//! escape sequences to a terminal. (JSON escapes by itself.) Colours are
//! on only when stderr is a terminal and `NO_COLOR` is unset.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
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

pub mod otlp;

/// Installs the global subscriber (harmless if one is already installed);
/// spans are exported too when the flags or the `OTEL_*` variables ask for
/// it ([`otlp::plan`]).
pub fn init(format: LogFormat, otlp_flags: &otlp::OtlpFlags) -> Result<Telemetry, String> {
    init_with_env(format, otlp_flags, &otlp::process_env)
}

/// [`init`] with the `OTEL_*` variables `env` returns (the exporter and the
/// SDK read the remaining ones from the process environment themselves).
pub fn init_with_env(
    format: LogFormat,
    otlp_flags: &otlp::OtlpFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Telemetry, String> {
    let plan = otlp::plan(otlp_flags, env);
    #[cfg(not(feature = "otel"))]
    let (plan, missing_feature) = match plan {
        _ if otlp_flags.endpoint.is_some() => {
            return Err(
                "--otlp-endpoint needs a build with OpenTelemetry: cargo build --release -p asyncgate-server --features otel"
                    .into(),
            );
        }
        // Whatever the variables say, nothing can be exported: say so
        // once, below, rather than refuse to start.
        Ok(plan) => {
            let wanted = plan.export.is_some();
            (otlp::Plan::default(), wanted)
        }
        Err(_) => (otlp::Plan::default(), true),
    };
    #[cfg(feature = "otel")]
    let plan = plan?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let fmt = match format {
        LogFormat::Text => text_layer(std::io::stderr, ansi).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(false)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    let telemetry = match &plan.export {
        None => {
            let _ = registry.try_init();
            Telemetry::default()
        }
        #[cfg(feature = "otel")]
        Some(export) => {
            let (layer, provider) = otel::layer(export, env)?;
            let _ = registry.with(layer).try_init();
            tracing::info!(
                protocol = ?export.protocol,
                endpoint = export.endpoint.as_deref().unwrap_or("from OTEL_EXPORTER_OTLP_*"),
                "exporting spans over OTLP"
            );
            Telemetry {
                provider: Some(provider),
            }
        }
        #[cfg(not(feature = "otel"))]
        Some(_) => Telemetry::default(),
    };
    #[cfg(not(feature = "otel"))]
    if missing_feature {
        tracing::warn!(
            "OTEL_* variables ask for span export, but this build lacks OpenTelemetry: spans are not exported; build with cargo build --release -p asyncgate-server --features otel"
        );
    }
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    Ok(telemetry)
}

use tracing_subscriber::Layer as _;

/// The text format: tracing-subscriber's, with [`EscapedFields`].
fn text_layer<S, W>(writer: W, ansi: bool) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(EscapedFields::default())
}

/// Whether a character may not appear raw in a text log line: control
/// characters (newlines, ESC, ...) and the Unicode line and paragraph
/// separators, which some viewers also break lines on.
fn must_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// A `fmt::Write` that escapes what [`must_escape`] names on its way to
/// the inner writer.
struct Escaper<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| must_escape(c)) {
            self.0.write_str(&rest[..at])?;
            write!(self.0, "\\u{{{:x}}}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// A field value whose `Debug` output goes through [`Escaper`].
struct Escaped<'a>(&'a dyn fmt::Debug);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Write::write_fmt(&mut Escaper(f), format_args!("{:?}", self.0))
    }
}

/// An error and its sources, as `error: source: source`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// The text format's field formatter: tracing-subscriber's default layout
/// (`name=value`, the message as is), with every value escaped. Hooking
/// the values rather than the writer keeps the real line ends (and the
/// formatter's own colours) intact.
#[derive(Debug, Default)]
pub struct EscapedFields(DefaultFields);

impl<'a> MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapingVisitor<tracing_subscriber::fmt::format::DefaultVisitor<'a>>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        EscapingVisitor(self.0.make_visitor(target))
    }
}

/// Hands a visitor every value wrapped in [`Escaped`]. Numbers and booleans
/// reach `record_debug` through `Visit`'s default methods.
#[derive(Debug)]
pub struct EscapingVisitor<V>(V);

impl<V: Visit> Visit for EscapingVisitor<V> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &Escaped(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default visitor does: the message as written, any other
        // string quoted.
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &ErrorChain(value));
    }
}

impl<V: VisitOutput<fmt::Result>> VisitOutput<fmt::Result> for EscapingVisitor<V> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl<V: VisitFmt> VisitFmt for EscapingVisitor<V> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

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
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    pub(super) fn layer<S>(
        export: &super::otlp::ExportPlan,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(impl tracing_subscriber::Layer<S>, SdkTracerProvider), String>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let exporter = super::otlp::exporter(export, env)?;
        // The SDK's detectors read OTEL_SERVICE_NAME and
        // OTEL_RESOURCE_ATTRIBUTES; the plan's name is set on top only
        // where the operator named none (or to make OTEL_SERVICE_NAME win).
        let mut resource = opentelemetry_sdk::Resource::builder();
        if let Some(name) = &export.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
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

#[cfg(test)]
mod escaping_tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{Escaper, text_layer};

    fn escape_controls(text: &str) -> String {
        let mut escaped = String::new();
        std::fmt::Write::write_str(&mut Escaper(&mut escaped), text).unwrap();
        escaped
    }

    #[test]
    fn control_characters_and_line_separators_are_escaped() {
        assert_eq!(
            escape_controls("a\nb\r\t\u{1b}[31m\u{0}\u{7f}\u{85}\u{2028}\u{2029}z"),
            r"a\u{a}b\u{d}\u{9}\u{1b}[31m\u{0}\u{7f}\u{85}\u{2028}\u{2029}z"
        );
        // Printable text, quotes and backslashes included, is left alone.
        let plain = "émigré 日本 \"q\" \\n";
        assert_eq!(escape_controls(plain), plain);
    }

    /// What the text layer writes while `log` runs, with colours `ansi`.
    fn logged(ansi: bool, log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            tracing_subscriber::registry().with(text_layer(move || writer.clone(), ansi));
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer\nerror")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner\u{1b}]0;owned\u{7}")]
    struct Inner;

    #[test]
    fn every_kind_of_field_stays_on_one_line() {
        let evil = "evil\n2026-01-01T00:00:00Z  INFO asyncgate::audit: forged\u{1b}]0;owned\u{7}";
        for ansi in [false, true] {
            let out = logged(ansi, || {
                let span =
                    tracing::info_span!("session", worker = %evil, late = tracing::field::Empty);
                span.record("late", tracing::field::display(evil));
                let _entered = span.enter();
                let error = Outer(Inner);
                tracing::info!(
                    shown = %evil,
                    debugged = ?evil,
                    text = evil,
                    error = &error as &(dyn std::error::Error + 'static),
                    "message {evil}"
                );
            });
            assert_eq!(out.matches('\n').count(), 1, "one line: {out}");
            assert!(out.ends_with('\n'), "{out}");
            assert!(!out.contains("\u{1b}]0;"), "no raw escape: {out:?}");
            assert!(!out.contains('\u{7}'), "no raw BEL: {out:?}");
            if !ansi {
                assert!(!out.contains('\u{1b}'), "no ESC at all: {out:?}");
            }
            // Every field is there, escaped: the span's two, the message and
            // the displayed one by us; strings and `?` values are quoted and
            // escaped by their Debug already.
            assert_eq!(out.matches(r"evil\u{a}2026").count(), 4, "{out}");
            assert_eq!(out.matches(r#""evil\n2026"#).count(), 2, "{out}");
            assert!(
                out.contains(r"outer\u{a}error: inner\u{1b}]0;owned\u{7}"),
                "{out}"
            );
        }
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
