//! The two exposition formats a scrape can ask for, as client_golang
//! serves them: OpenMetrics 1.0 when the `Accept` header names
//! `application/openmetrics-text` (Prometheus does), else the classic text
//! format 0.0.4 (curl, `promtool check metrics`, older scrapers).
//!
//! prometheus-client writes only OpenMetrics, whose counter families are
//! named without `_total` (`# TYPE grpc_server_handled counter`, samples
//! `grpc_server_handled_total`); a classic parser then sees samples of a
//! family with no HELP and no TYPE. [`to_text_format`] rewrites the
//! OpenMetrics text line by line: counter families take their samples'
//! `_total` name, `# UNIT` and `# EOF` go, and types the classic format
//! lacks become what client_golang writes for them.

/// A scrape's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when named
    /// (with a non-zero quality), as client_golang decides.
    pub(crate) fn negotiate(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let named = parts.next().is_some_and(|media| {
                    media.eq_ignore_ascii_case("application/openmetrics-text")
                });
                let refused = parts.any(|param| {
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                named && !refused
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }

    /// The response's `Content-Type`.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The classic text format of prometheus-client's OpenMetrics `text`.
pub(crate) fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE, and the family's classic name depends on the
    // type: hold HELP back until TYPE is known.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                // client_golang writes an info metric as a gauge of 1.
                "info" => (format!("{name}_info"), "gauge"),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((help_name, text)) = help.take()
                && help_name == name
            {
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            // `# UNIT`, `# EOF`: OpenMetrics only.
            continue;
        }
        // Samples; OpenMetrics-only parts of them are dropped: `_created`
        // series and exemplars (` # {...}` after the value).
        let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
        let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
        if sample[..name_end].ends_with("_created") {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Text
        );
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        code: &'static str,
    }

    #[test]
    fn every_family_keeps_its_help_and_type_in_the_text_format() {
        let mut registry = Registry::default();
        let counter = Family::<Labels, Counter>::default();
        counter.get_or_create(&Labels { code: "OK" }).inc();
        registry.register("calls", "Calls made", counter);
        registry.register_with_unit(
            "work",
            "Work done",
            Unit::Seconds,
            Counter::<f64>::default(),
        );
        registry.register("depth", "Queue depth", Gauge::<i64>::default());
        registry.register_with_unit(
            "latency",
            "Call latency",
            Unit::Seconds,
            Histogram::new([0.1, 1.0]),
        );
        registry.register("build", "Build", Info::new(vec![("version", "1.2.3")]));
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &registry).unwrap();
        let text = to_text_format(&openmetrics);
        assert_eq!(
            text,
            "# HELP calls_total Calls made.\n\
             # TYPE calls_total counter\n\
             calls_total{code=\"OK\"} 1\n\
             # HELP work_seconds_total Work done.\n\
             # TYPE work_seconds_total counter\n\
             work_seconds_total 0.0\n\
             # HELP depth Queue depth.\n\
             # TYPE depth gauge\n\
             depth 0\n\
             # HELP latency_seconds Call latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_sum 0.0\n\
             latency_seconds_count 0\n\
             latency_seconds_bucket{le=\"0.1\"} 0\n\
             latency_seconds_bucket{le=\"1.0\"} 0\n\
             latency_seconds_bucket{le=\"+Inf\"} 0\n\
             # HELP build_info Build.\n\
             # TYPE build_info gauge\n\
             build_info{version=\"1.2.3\"} 1\n",
            "from\n{openmetrics}"
        );
    }
}
