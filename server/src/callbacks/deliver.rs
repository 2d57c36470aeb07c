//! One delivery attempt of a terminal ticket to its callback: over HTTP, a
//! POST of the ticket in the proto3 JSON mapping signed as Standard
//! Webhooks say; over gRPC, `Callbacks.TicketFinished(ticket)`. Names are
//! resolved by the gateway and every address checked against the policy
//! (a name that resolves to a private address not listed is refused), and
//! redirects are not followed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use asyncgate_proto::v1 as pb;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::CallbackSettings;

/// One attempt's time budget.
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// gRPC channels kept for reuse (one per destination).
const MAX_CHANNELS: usize = 256;

/// How an attempt failed.
#[derive(Debug)]
pub(super) struct Failed {
    /// Whether another attempt may succeed.
    pub(super) retryable: bool,
    pub(super) message: String,
}

impl Failed {
    fn retry(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    fn give_up(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// Resolves names for an HTTP client, keeping only the addresses the
/// policy lets the gateway reach (callbacks, admin-set targets).
pub(crate) struct CheckedResolver(pub(crate) Arc<CallbackSettings>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let settings = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = checked_addresses(&settings, &host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `host`'s addresses that the policy lets the gateway reach, or why there
/// are none.
pub(crate) async fn checked_addresses(
    settings: &CallbackSettings,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let allowed: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| settings.may_connect(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "{host} resolves only to addresses the gateway may not reach ({}): loopback, private and link-local ones must be listed in --callback-allow as addresses or networks",
            found.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
        )
        .into());
    }
    Ok(allowed)
}

/// Connects a gRPC channel (a callback receiver's, an admin-set target's)
/// to its `HOST:PORT` at an address the policy allows, resolving at every
/// connect: a name later pointed at another address is followed, and one
/// pointed at a private address is refused then.
#[derive(Clone)]
pub(crate) struct CheckedConnector(pub(crate) Arc<CallbackSettings>);

impl tower::Service<tonic::codegen::http::Uri> for CheckedConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the target names no host")?;
            let host = host.trim_matches(['[', ']']);
            let tls = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let addresses = checked_addresses(&policy, host, port).await?;
            let stream = tokio::net::TcpStream::connect(&addresses[..]).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// Delivers callbacks; shared by the runner's tasks.
pub(super) struct Deliverer {
    settings: Arc<CallbackSettings>,
    http: reqwest::Client,
    signers: Vec<standardwebhooks::Webhook>,
    channels: Mutex<HashMap<String, Channel>>,
    ticket_json: MessageDescriptor,
}

impl Deliverer {
    pub(super) fn new(settings: Arc<CallbackSettings>) -> Result<Self, String> {
        let tls = system_tls()?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver(settings.clone())))
            .connect_timeout(Duration::from_secs(5))
            .timeout(ATTEMPT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("callback HTTP client: {e}"))?;
        let signers = settings
            .secrets
            .iter()
            .map(|s| standardwebhooks::Webhook::new(s.expose()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--callback-secret: {e}"))?;
        let pool = DescriptorPool::decode(asyncgate_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("descriptors: {e}"))?;
        let ticket_json = pool
            .get_message_by_name("asyncgate.v1.Ticket")
            .ok_or("asyncgate.v1.Ticket is not in the descriptors")?;
        Ok(Self {
            settings,
            http,
            signers,
            channels: Mutex::new(HashMap::new()),
            ticket_json,
        })
    }

    /// One attempt to deliver `ticket` (its terminal form) as `webhook_id`.
    pub(super) async fn deliver(
        &self,
        url: &str,
        ticket: pb::Ticket,
        webhook_id: &str,
    ) -> Result<(), Failed> {
        // The settings may have changed since the submit (a restart).
        let url = self
            .settings
            .check(url)
            .map_err(|refused| Failed::give_up(format!("refused: {refused:?}")))?;
        let parsed = url::Url::parse(&url).map_err(|e| Failed::give_up(e.to_string()))?;
        match parsed.scheme() {
            "grpc" | "grpcs" => self.call(&parsed, ticket, webhook_id).await,
            _ => self.post(&url, ticket, webhook_id).await,
        }
    }

    async fn post(&self, url: &str, ticket: pb::Ticket, webhook_id: &str) -> Result<(), Failed> {
        if self.signers.is_empty() {
            return Err(Failed::give_up(
                "the gateway has no --callback-secret to sign HTTP callbacks with",
            ));
        }
        let body = self.json(&ticket).map_err(Failed::give_up)?;
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let signatures = self
            .signers
            .iter()
            .map(|signer| signer.sign(webhook_id, timestamp, &body))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failed::give_up(format!("signing: {e}")))?;
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(body)
            .send()
            .await
            .map_err(|e| Failed::retry(describe_http_error(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("the receiver answered HTTP {status}");
        if status == reqwest::StatusCode::GONE {
            Err(Failed::give_up(format!(
                "{message}: it wants no more deliveries"
            )))
        } else if status.is_redirection() {
            Err(Failed::give_up(format!(
                "{message}: redirects are not followed"
            )))
        } else {
            Err(Failed::retry(message))
        }
    }

    async fn call(
        &self,
        url: &url::Url,
        ticket: pb::Ticket,
        webhook_id: &str,
    ) -> Result<(), Failed> {
        let channel = self.channel(url).map_err(Failed::retry)?;
        let mut client = pb::callbacks_client::CallbacksClient::new(channel);
        let mut request = tonic::Request::new(ticket);
        request.set_timeout(ATTEMPT_TIMEOUT);
        if let Ok(id) = webhook_id.parse() {
            request.metadata_mut().insert("webhook-id", id);
        }
        match client.ticket_finished(request).await {
            Ok(_) => Ok(()),
            Err(status) => {
                // A status with a source was made here (no connection),
                // not sent by the receiver.
                let message = if std::error::Error::source(&status).is_some() {
                    format!("could not reach the receiver: {}", status.message())
                } else {
                    format!(
                        "the receiver answered {:?}: {}",
                        status.code(),
                        status.message()
                    )
                };
                let final_codes = [
                    tonic::Code::Unimplemented,
                    tonic::Code::InvalidArgument,
                    tonic::Code::PermissionDenied,
                    tonic::Code::Unauthenticated,
                ];
                if final_codes.contains(&status.code()) {
                    Err(Failed::give_up(message))
                } else {
                    Err(Failed::retry(message))
                }
            }
        }
    }

    /// The channel to `url`'s HOST:PORT (kept for reuse); each connect
    /// resolves the host and reaches only an address the policy allows.
    fn channel(&self, url: &url::Url) -> Result<Channel, String> {
        let key = url.as_str().to_owned();
        if let Some(channel) = lock(&self.channels).get(&key) {
            return Ok(channel.clone());
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port().unwrap_or(443);
        let tls = url.scheme() == "grpcs";
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host}:{port}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5));
        if tls {
            endpoint = endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .with_native_roots()
                        .domain_name(host.trim_matches(['[', ']'])),
                )
                .map_err(|e| e.to_string())?;
        }
        let channel = endpoint.connect_with_connector_lazy(CheckedConnector(self.settings.clone()));
        let mut channels = lock(&self.channels);
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// The ticket in the proto3 JSON mapping.
    fn json(&self, ticket: &pb::Ticket) -> Result<Vec<u8>, String> {
        let message =
            DynamicMessage::decode(self.ticket_json.clone(), ticket.encode_to_vec().as_slice())
                .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        let mut serializer = serde_json::Serializer::new(&mut body);
        message
            .serialize_with_options(&mut serializer, &SerializeOptions::new())
            .map_err(|e| e.to_string())?;
        Ok(body)
    }
}

/// TLS for HTTPS callbacks: the system's root certificates, rustls on ring
/// (as everywhere in the gateway).
fn system_tls() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system root certificate was not loaded");
    }
    roots.add_parsable_certificates(native.certs);
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// An HTTP client error in one line, with its cause.
fn describe_http_error(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
