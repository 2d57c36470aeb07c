//! Span export through the real `asyncgate-server` binary, configured the
//! way operators do it: the standard `OTEL_*` variables (given to the child
//! process only; this process's environment is never touched) and the
//! `--otlp-*` flags that override them. An in-process collector receives
//! OTLP over gRPC (`TraceService`) and over HTTP/protobuf (`POST
//! /v1/traces`), each also over TLS with a certificate of a CA made for
//! the test. Built with `--features otel` (scripts/test.sh runs it); without
//! the feature, the binary warns that the variables cannot take effect.

use std::process::Stdio;

use tokio::process::{Child, Command};

use asyncgate_client::Client;

mod common;
use common::{free_port, wait_until_serving};

/// Starts the binary with `args` and exactly the `OTEL_*`/`ASYNCGATE_*`
/// variables in `vars` (inherited ones are removed); its log goes to a
/// temporary file. Returns it, a client, and the log's path.
async fn start_gateway(
    args: &[&str],
    vars: &[(&str, &str)],
) -> (Child, Client, tempfile::NamedTempFile) {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"));
    command
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "memory",
        ])
        .args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("OTEL_") || name.starts_with("ASYNCGATE_") {
            command.env_remove(name.as_ref());
        }
    }
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        // Export each batch within 50 ms rather than 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log file"))
        .kill_on_drop(true);
    let child = command.spawn().expect("the server binary starts");
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).expect("client");
    wait_until_serving(&client).await;
    (child, client, log)
}

#[cfg(feature = "otel")]
mod collector {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use asyncgate_client::{Client, Submit};

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;
    use tonic::codegen::http;

    /// One export as the collector received it.
    #[derive(Debug)]
    pub(crate) struct Export {
        /// The request path (the gRPC method's for gRPC).
        pub(crate) path: String,
        /// The request headers (gRPC metadata for gRPC).
        pub(crate) headers: http::HeaderMap,
        pub(crate) request: ExportTraceServiceRequest,
    }

    impl Export {
        /// `(service.name, span name)` of every span in the export.
        pub(crate) fn spans(&self) -> Vec<(String, String)> {
            let mut spans = Vec::new();
            for resource_spans in &self.request.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                    .map(|value| match value {
                        Value::StringValue(name) => name.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push((service.clone(), span.name.clone()));
                    }
                }
            }
            spans
        }
    }

    /// The test CA's certificate (PEM, also written to `ca.pem` in the
    /// directory) and a server certificate and key for 127.0.0.1.
    pub(crate) struct Pki {
        pub(crate) dir: tempfile::TempDir,
        pub(crate) server: (String, String),
    }

    impl Pki {
        pub(crate) fn generate() -> Pki {
            use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            Pki {
                dir,
                server: (cert.pem(), key.serialize_pem()),
            }
        }

        pub(crate) fn ca_file(&self) -> String {
            self.dir.path().join("ca.pem").display().to_string()
        }
    }

    struct Grpc(mpsc::UnboundedSender<Export>);

    #[tonic::async_trait]
    impl TraceService for Grpc {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let headers = request.metadata().clone().into_headers();
            let _ = self.0.send(Export {
                path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export".into(),
                headers,
                request: request.into_inner(),
            });
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// An OTLP/gRPC collector on an ephemeral loopback port, over TLS with
    /// `pki`'s server certificate when given.
    pub(crate) async fn grpc(pki: Option<&Pki>) -> (SocketAddr, mpsc::UnboundedReceiver<Export>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut server = tonic::transport::Server::builder();
        if let Some(pki) = pki {
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(
                    tonic::transport::Identity::from_pem(&pki.server.0, &pki.server.1),
                ))
                .unwrap();
        }
        let serve = server
            .add_service(TraceServiceServer::new(Grpc(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        // Ends with the test's runtime.
        tokio::spawn(serve);
        (addr, rx)
    }

    /// An OTLP/HTTP collector (any path, protobuf bodies) on an ephemeral
    /// loopback port, over TLS with `pki`'s server certificate when given.
    pub(crate) async fn http(pki: Option<&Pki>) -> (SocketAddr, mpsc::UnboundedReceiver<Export>) {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let tls = pki.map(|pki| {
            let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(pki.server.0.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap(),
            )
            .unwrap();
            tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
        });
        // Ends with the test's runtime.
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let path = request.uri().path().to_owned();
                                let headers = request.headers().clone();
                                let body = request.into_body().collect().await?.to_bytes();
                                let status = match ExportTraceServiceRequest::decode(body) {
                                    Ok(request) => {
                                        let _ = tx.send(Export {
                                            path,
                                            headers,
                                            request,
                                        });
                                        http::StatusCode::OK
                                    }
                                    Err(_) => http::StatusCode::BAD_REQUEST,
                                };
                                let mut response = http::Response::new(Full::new(Bytes::from(
                                    ExportTraceServiceResponse::default().encode_to_vec(),
                                )));
                                *response.status_mut() = status;
                                response.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("application/x-protobuf"),
                                );
                                Ok::<_, hyper::Error>(response)
                            }
                        },
                    );
                    let http1 = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http1
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// Submits a ticket through `client` and waits (30 s at most) for the
    /// collector to receive the `submit` span; returns that export.
    pub(crate) async fn submit_and_receive(
        client: &Client,
        received: &mut mpsc::UnboundedReceiver<Export>,
        log: &tempfile::NamedTempFile,
    ) -> Export {
        client
            .submit(Submit::new("traced").build())
            .await
            .expect("submit");
        let wait = async {
            loop {
                let export = received.recv().await.expect("the collector runs");
                if export.spans().iter().any(|(_, name)| name == "submit") {
                    return export;
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(export) => export,
            Err(_) => panic!(
                "no submit span within 30 s; the gateway logged:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            ),
        }
    }

    /// The service.name of the export's `submit` span.
    pub(crate) fn service_of_submit(export: &Export) -> String {
        export
            .spans()
            .into_iter()
            .find(|(_, name)| name == "submit")
            .map(|(service, _)| service)
            .expect("a submit span")
    }
}

#[cfg(feature = "otel")]
use collector::{Pki, service_of_submit, submit_and_receive};

#[cfg(feature = "otel")]
#[tokio::test]
async fn otel_variables_alone_export_over_grpc() {
    let (addr, mut received) = collector::grpc(None).await;
    let endpoint = format!("http://{addr}");
    let (_gateway, client, log) = start_gateway(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "orders-grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme"),
        ],
    )
    .await;
    let export = submit_and_receive(&client, &mut received, &log).await;
    assert_eq!(service_of_submit(&export), "orders-grpc");
    assert_eq!(export.headers.get("x-tenant").unwrap(), "acme");
}

#[cfg(feature = "otel")]
#[tokio::test]
async fn otel_variables_alone_export_over_http_protobuf() {
    let (addr, mut received) = collector::http(None).await;
    let endpoint = format!("http://{addr}");
    let (_gateway, client, log) = start_gateway(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "orders-http"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=acme"),
        ],
    )
    .await;
    let export = submit_and_receive(&client, &mut received, &log).await;
    assert_eq!(service_of_submit(&export), "orders-http");
    assert_eq!(
        export.path, "/v1/traces",
        "appended to the generic endpoint"
    );
    assert_eq!(
        export.headers.get("content-type").unwrap(),
        "application/x-protobuf"
    );
    assert_eq!(export.headers.get("x-tenant").unwrap(), "acme");
}

#[cfg(feature = "otel")]
#[tokio::test]
async fn flags_override_the_otel_variables() {
    let (addr, mut received) = collector::http(None).await;
    // The variables point at a gRPC collector that is not there.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let flag = format!("http://{addr}/");
    let (_gateway, client, log) = start_gateway(
        &["--otlp-endpoint", &flag, "--otlp-protocol", "http/protobuf"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &nowhere),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &nowhere),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    let export = submit_and_receive(&client, &mut received, &log).await;
    assert_eq!(export.path, "/v1/traces");
    assert_eq!(
        service_of_submit(&export),
        "asyncgate",
        "the default name when none is given"
    );
}

#[cfg(feature = "otel")]
#[tokio::test]
async fn https_http_protobuf_trusts_otel_exporter_otlp_certificate() {
    let pki = Pki::generate();
    let (addr, mut received) = collector::http(Some(&pki)).await;
    // The signal-specific endpoint is used as is.
    let endpoint = format!("https://{addr}/custom/traces");
    let (_gateway, client, log) = start_gateway(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca_file()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attributes,team=a",
            ),
        ],
    )
    .await;
    let export = submit_and_receive(&client, &mut received, &log).await;
    assert_eq!(export.path, "/custom/traces");
    assert_eq!(service_of_submit(&export), "from-attributes");
}

#[cfg(feature = "otel")]
#[tokio::test]
async fn https_grpc_trusts_otel_exporter_otlp_certificate() {
    let pki = Pki::generate();
    let (addr, mut received) = collector::grpc(Some(&pki)).await;
    let endpoint = format!("https://{addr}");
    let (_gateway, client, log) = start_gateway(
        &["--otlp-endpoint", &endpoint],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &pki.ca_file()),
            ("OTEL_SERVICE_NAME", "orders-tls"),
        ],
    )
    .await;
    let export = submit_and_receive(&client, &mut received, &log).await;
    assert_eq!(service_of_submit(&export), "orders-tls");
}

#[cfg(not(feature = "otel"))]
#[tokio::test]
async fn a_build_without_otel_warns_that_the_variables_cannot_take_effect() {
    let (mut gateway, _client, log) = start_gateway(
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")],
    )
    .await;
    let text = std::fs::read_to_string(log.path()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("lacks OpenTelemetry"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("WARN"), "{text}");
    assert!(
        warnings[0].contains("--features otel"),
        "says how to get it: {text}"
    );
    // It serves all the same.
    assert_eq!(gateway.try_wait().unwrap(), None);
}
