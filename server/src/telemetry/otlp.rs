//! Whether and how spans are exported over OTLP, from the flags and the
//! standard `OTEL_*` variables, and (with the `otel` feature) the exporter
//! built from that.
//!
//! The split follows what opentelemetry-otlp 0.33 does by itself: it reads
//! `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` (appending `/v1/traces` to the
//! generic one over HTTP, defaulting to ports 4317/4318),
//! `_HEADERS`, `_TIMEOUT`, `_COMPRESSION` and `_INSECURE`, and the SDK reads
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]` and `OTEL_BSP_*`;
//! none of those is read here unless a flag overrides it. What the crates
//! leave to the application is decided in [`plan`]: whether to export at
//! all (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`, an endpoint), which
//! transport (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, since the transport
//! is chosen before the builder exists), the extra trust roots
//! (`OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`) and the service name's
//! default. [`plan`] takes its variables through a lookup function, so
//! tests decide them without touching the process environment.
//!
//! Precedence: a flag beats its variable; the signal-specific variable
//! beats the generic one; `OTEL_SDK_DISABLED=true` turns export off
//! whatever else is set.

use std::path::PathBuf;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (default port 4317).
    #[value(name = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318, path `/v1/traces`).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

/// What the command line says about export (`--otlp-endpoint`,
/// `--otlp-protocol`).
#[derive(Debug, Clone, Default)]
pub struct OtlpFlags {
    /// The collector's base URL, like `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// The transport, like `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<OtlpProtocol>,
}

/// How to export, once [`plan`] decided to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPlan {
    /// The transport.
    pub protocol: OtlpProtocol,
    /// The URL to hand the exporter (from the flag, `/v1/traces` appended
    /// over HTTP); `None` leaves it to the exporter's own reading of the
    /// variables and its defaults.
    pub endpoint: Option<String>,
    /// A PEM file of certificates to trust besides the system's roots.
    pub certificate: Option<PathBuf>,
    /// The `service.name` to set; `None` when `OTEL_RESOURCE_ATTRIBUTES`
    /// names it (the SDK reads it there).
    pub service_name: Option<String>,
}

/// What [`plan`] decided, and what to tell the operator about it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `None`: no export.
    pub export: Option<ExportPlan>,
    /// Settings that were ignored, and why (logged once the subscriber is
    /// in place).
    pub warnings: Vec<String>,
}

/// The service name when nothing names it.
pub const DEFAULT_SERVICE_NAME: &str = "asyncgate";

/// Decides export from `flags` and the variables `env` returns (an empty
/// value counts as unset, as the spec says). Errors are configuration the
/// gateway must refuse (exit 64).
pub fn plan(flags: &OtlpFlags, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan, String> {
    let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let mut warnings = Vec::new();
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        if flags.endpoint.is_some() {
            warnings.push(
                "OTEL_SDK_DISABLED=true: spans are not exported, --otlp-endpoint notwithstanding"
                    .into(),
            );
        }
        return Ok(Plan {
            export: None,
            warnings,
        });
    }
    let exporter = var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase());
    let named_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let wanted = match exporter.as_deref() {
        _ if flags.endpoint.is_some() => true,
        Some("none") => false,
        Some("otlp") => true,
        Some(other) => {
            warnings.push(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported (only otlp and none)"
            ));
            named_endpoint
        }
        None => named_endpoint,
    };
    if !wanted {
        return Ok(Plan {
            export: None,
            warnings,
        });
    }
    let protocol = match flags.protocol {
        Some(protocol) => protocol,
        None => {
            let named = [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]
            .into_iter()
            .find_map(|name| var(name).map(|value| (name, value)));
            match named {
                Some((name, value)) => OtlpProtocol::parse(&value).ok_or_else(|| {
                    format!("{name}={value}: the gateway exports over grpc or http/protobuf")
                })?,
                // OTLP/gRPC was this gateway's only transport: it stays the
                // default (the spec allows that for compatibility).
                None => OtlpProtocol::Grpc,
            }
        }
    };
    let endpoint = flags.endpoint.as_ref().map(|endpoint| match protocol {
        OtlpProtocol::Grpc => endpoint.clone(),
        // The flag is the generic base URL, as OTEL_EXPORTER_OTLP_ENDPOINT.
        OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    });
    let certificate = var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        .or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE"))
        .map(PathBuf::from);
    for name in [
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    ] {
        if var(name).is_some() {
            warnings.push(format!(
                "{name} is not supported: spans are exported without a client certificate"
            ));
        }
    }
    let service_name = match var("OTEL_SERVICE_NAME") {
        // Set explicitly, so it also beats a service.name in
        // OTEL_RESOURCE_ATTRIBUTES, as the spec orders.
        Some(name) => Some(name),
        None if var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes
                .split(',')
                .any(|pair| pair.split('=').next().map(str::trim) == Some("service.name"))
        }) =>
        {
            None
        }
        None => Some(DEFAULT_SERVICE_NAME.to_owned()),
    };
    Ok(Plan {
        export: Some(ExportPlan {
            protocol,
            endpoint,
            certificate,
            service_name,
        }),
        warnings,
    })
}

/// The process environment, for [`plan`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The exporter of `plan` (needs a Tokio runtime: the gRPC channel's
/// worker is spawned on it).
#[cfg(feature = "otel")]
pub(super) fn exporter(
    plan: &ExportPlan,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::WithTonicConfig as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};

    let extra_roots = match &plan.certificate {
        Some(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {}: {e}", path.display()))?,
        None => None,
    };
    let exporter = match plan.protocol {
        OtlpProtocol::Grpc => {
            // TLS only applies to https:// endpoints; system roots plus the
            // given certificates.
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = &extra_roots {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_tls_config(tls);
            match &plan.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
        OtlpProtocol::HttpProtobuf => {
            let client = http_client(extra_roots.as_deref(), export_timeout(env))?;
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_http_client(client);
            match &plan.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
    };
    exporter.map_err(|e| format!("OTLP exporter: {e}"))
}

/// `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` (milliseconds, default 10 s): the
/// exporter applies it to clients it builds itself, and this one is ours.
#[cfg(feature = "otel")]
fn export_timeout(env: &dyn Fn(&str) -> Option<String>) -> std::time::Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .into_iter()
    .find_map(|name| env(name)?.trim().parse::<u64>().ok())
    .map_or(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis,
    )
}

/// The HTTP client: reqwest's blocking one, since the SDK's batch processor
/// exports from a thread of its own (no runtime there, and none of the
/// gateway's runtime threads blocks on it), with rustls on ring (as the
/// gateway's own TLS) trusting the system roots and `extra_roots`.
#[cfg(feature = "otel")]
fn http_client(
    extra_roots: Option<&[u8]>,
    timeout: std::time::Duration,
) -> Result<reqwest::blocking::Client, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "OTLP: a system root certificate was not loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_roots {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: not PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("OTLP TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // reqwest's blocking client owns a runtime of its own, which must not
    // be created (or dropped) on a thread of the gateway's runtime.
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .build()
    })
    .join()
    .map_err(|_| "OTLP: building the HTTP client panicked".to_owned())?
    .map_err(|e| format!("OTLP HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn plan_with(flags: &OtlpFlags, vars: &[(&str, &str)]) -> Result<Plan, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan(flags, &|name| vars.get(name).cloned())
    }

    fn export(flags: &OtlpFlags, vars: &[(&str, &str)]) -> Option<ExportPlan> {
        plan_with(flags, vars).unwrap().export
    }

    fn flag(endpoint: &str, protocol: Option<OtlpProtocol>) -> OtlpFlags {
        OtlpFlags {
            endpoint: Some(endpoint.into()),
            protocol,
        }
    }

    #[test]
    fn nothing_configured_exports_nothing() {
        assert_eq!(
            plan_with(&OtlpFlags::default(), &[]).unwrap(),
            Plan::default()
        );
        assert_eq!(
            export(&OtlpFlags::default(), &[("OTEL_SERVICE_NAME", "svc")]),
            None,
            "a name alone does not start exporting"
        );
        assert_eq!(
            export(
                &OtlpFlags::default(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]
            ),
            None,
            "empty is unset"
        );
    }

    #[test]
    fn an_endpoint_variable_turns_export_on_and_leaves_it_to_the_exporter() {
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            let plan = export(&OtlpFlags::default(), &[(name, "http://c:4317")]).unwrap();
            assert_eq!(
                plan,
                ExportPlan {
                    protocol: OtlpProtocol::Grpc,
                    endpoint: None,
                    certificate: None,
                    service_name: Some("asyncgate".into()),
                }
            );
        }
        let plan = export(&OtlpFlags::default(), &[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap();
        assert_eq!(plan.endpoint, None, "the exporter's default endpoint");
    }

    #[test]
    fn protocol_flag_beats_signal_variable_beats_generic() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert_eq!(
            export(&OtlpFlags::default(), &vars).unwrap().protocol,
            OtlpProtocol::Grpc
        );
        let mut signal = vars.to_vec();
        signal.push(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"));
        assert_eq!(
            export(&OtlpFlags::default(), &signal).unwrap().protocol,
            OtlpProtocol::HttpProtobuf
        );
        let flags = OtlpFlags {
            endpoint: None,
            protocol: Some(OtlpProtocol::Grpc),
        };
        assert_eq!(
            export(&flags, &signal).unwrap().protocol,
            OtlpProtocol::Grpc
        );
        let error = plan_with(
            &OtlpFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
        )
        .unwrap_err();
        assert!(
            error.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
            "{error}"
        );
    }

    #[test]
    fn the_endpoint_flag_is_a_base_url_like_the_generic_variable() {
        let vars = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4317")];
        assert_eq!(
            export(&flag("http://flag:4317", None), &vars)
                .unwrap()
                .endpoint,
            Some("http://flag:4317".into())
        );
        assert_eq!(
            export(
                &flag("http://flag:4318/", Some(OtlpProtocol::HttpProtobuf)),
                &vars
            )
            .unwrap()
            .endpoint,
            Some("http://flag:4318/v1/traces".into())
        );
    }

    #[test]
    fn sdk_disabled_wins_and_none_is_overridden_by_the_flag() {
        let disabled = plan_with(
            &flag("http://c:4317", None),
            &[("OTEL_SDK_DISABLED", "TRUE")],
        )
        .unwrap();
        assert_eq!(disabled.export, None);
        assert_eq!(disabled.warnings.len(), 1, "{:?}", disabled.warnings);
        let vars = [
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ];
        assert_eq!(export(&OtlpFlags::default(), &vars), None);
        assert!(export(&flag("http://c:4317", None), &vars).is_some());
        assert!(
            export(
                &OtlpFlags::default(),
                &[
                    ("OTEL_SDK_DISABLED", "false"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")
                ]
            )
            .is_some()
        );
    }

    #[test]
    fn service_name_and_certificate_come_from_their_variables() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317");
        let plan = export(
            &OtlpFlags::default(),
            &[
                base,
                ("OTEL_SERVICE_NAME", "billing"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=other,team=a"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces.pem"),
            ],
        )
        .unwrap();
        assert_eq!(plan.service_name.as_deref(), Some("billing"));
        assert_eq!(plan.certificate, Some(PathBuf::from("/traces.pem")));
        let plan = export(
            &OtlpFlags::default(),
            &[
                base,
                ("OTEL_RESOURCE_ATTRIBUTES", "team=a, service.name=other"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic.pem"),
            ],
        )
        .unwrap();
        assert_eq!(plan.service_name, None, "the SDK reads it from there");
        assert_eq!(plan.certificate, Some(PathBuf::from("/generic.pem")));
    }
}
