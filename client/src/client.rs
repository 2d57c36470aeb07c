//! [`Client`]: the caller's side of the `Gateway` service.
//!
//! A thin, cloneable wrapper over the generated `GatewayClient<Channel>` that
//! adds what every caller would otherwise rewrite: address parsing with sane
//! transport settings, `&str`/`Duration` arguments instead of request structs,
//! and [`EventStream`]s that resume themselves across broken connections.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pb::gateway_client::GatewayClient;
use crate::stream::{Resumer, Target};
use crate::{
    ClientError, Credentials, EventStream, ResumeOptions, Tls, Transport, convert, pb, transport,
};
pub use tonic::codec::CompressionEncoding;

/// How long a connection attempt may take before it counts as failed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PING cadence: finds a dead peer on an otherwise silent connection
/// (an idle long-poll, a watch between keepalives).
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a PING may go unanswered before the connection is closed.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to an Asyncgate gateway.
///
/// Cloning is cheap and clones share one HTTP/2 connection, which multiplexes
/// any number of concurrent calls; clone it into tasks rather than
/// connecting again. The underlying channel reconnects on its own after a
/// connection loss, so a `Client` stays usable across gateway restarts.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    inner: GatewayClient<Transport>,
    credentials: Credentials,
    compression: Option<CompressionEncoding>,
    resume: ResumeOptions,
}

impl Client {
    /// Connects to `url` (`http://host:port`; a bare `host:port` gets
    /// `http://`), failing at once if the gateway cannot be reached.
    pub async fn connect(url: impl Into<String>) -> Result<Client, ClientError> {
        let channel = transport::connect(&endpoint(url)?).await?;
        Ok(Client::from_channel(channel))
    }

    /// Connects to an `https://` gateway with these TLS settings.
    pub async fn connect_with_tls(
        url: impl Into<String>,
        tls: &Tls,
    ) -> Result<Client, ClientError> {
        let channel = transport::connect(&endpoint_with(url, Some(tls))?).await?;
        Ok(Client::from_channel(channel))
    }

    /// Like [`Client::connect`] but connects on the first call, so a client
    /// can be created before the gateway is up.
    pub fn connect_lazy(url: impl Into<String>) -> Result<Client, ClientError> {
        Ok(Client::from_channel(transport::connect_lazy(&endpoint(
            url,
        )?)))
    }

    /// Wraps an existing channel (custom TLS, an in-process transport, or a
    /// connection shared with a worker).
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            inner: GatewayClient::with_interceptor(channel.clone(), Credentials::default())
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
            channel,
            credentials: Credentials::default(),
            compression: None,
            resume: ResumeOptions::default(),
        }
    }

    /// Presents this API key (`authorization: Bearer <key>`) on every call.
    pub fn with_api_key(mut self, key: &str) -> Result<Client, ClientError> {
        self.credentials = Credentials::api_key(key)?;
        Ok(self.rebuilt())
    }

    /// Compresses requests with `encoding` and asks the gateway to compress
    /// its replies the same way: worth it for large, compressible payloads
    /// (JSON, text) on slow links; on a fast network it mostly costs CPU.
    #[must_use]
    pub fn with_compression(mut self, encoding: CompressionEncoding) -> Client {
        self.compression = Some(encoding);
        self.rebuilt()
    }

    fn rebuilt(mut self) -> Client {
        let mut inner =
            GatewayClient::with_interceptor(self.channel.clone(), self.credentials.clone())
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
        if let Some(encoding) = self.compression {
            inner = inner.send_compressed(encoding).accept_compressed(encoding);
        }
        self.inner = inner;
        self
    }

    /// Replaces how [`EventStream`]s of this client resume after a broken
    /// connection.
    #[must_use]
    pub fn with_resume_options(mut self, options: ResumeOptions) -> Client {
        self.resume = options;
        self
    }

    /// The operator's API (`asyncgate.v1.Admin`) on this connection, with
    /// this client's API key.
    pub fn admin(&self) -> crate::Admin {
        let mut inner = crate::pb::admin_client::AdminClient::with_interceptor(
            self.channel.clone(),
            self.credentials.clone(),
        );
        if let Some(encoding) = self.compression {
            inner = inner.send_compressed(encoding).accept_compressed(encoding);
        }
        crate::Admin::new(inner)
    }

    /// Schedules (`asyncgate.v1.Schedules`) on this connection, with this
    /// client's API key.
    pub fn schedules(&self) -> crate::Schedules {
        let mut inner = crate::pb::schedules_client::SchedulesClient::with_interceptor(
            self.channel.clone(),
            self.credentials.clone(),
        );
        if let Some(encoding) = self.compression {
            inner = inner.send_compressed(encoding).accept_compressed(encoding);
        }
        crate::Schedules::new(inner)
    }

    /// A producer's stream (`Gateway.SubmitStream`): many submits, one
    /// message each, answered in order once stored.
    pub async fn submitter(&self) -> Result<crate::Submitter, ClientError> {
        crate::Submitter::open(self.inner.clone()).await
    }

    /// Follows many tickets to their ends on one stream
    /// (`Gateway.WatchTickets`, terminal events only).
    pub async fn results(&self) -> Result<crate::Results, ClientError> {
        crate::Results::open(self.inner.clone()).await
    }

    /// The generated client, for calls this wrapper does not cover (custom
    /// metadata, compression, message size limits).
    pub fn raw(&self) -> GatewayClient<Transport> {
        self.inner.clone()
    }

    /// Whether the gateway serves `service` (`""` for the whole gateway),
    /// by the standard `grpc.health.v1.Health/Check`, which needs no API
    /// key. The gateway reports NOT_SERVING while its store fails and once
    /// it is shutting down; an unknown service is a `NOT_FOUND` error.
    pub async fn serving(&self, service: &str) -> Result<bool, ClientError> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner();
        Ok(response.status() == ServingStatus::Serving)
    }

    /// Stores a request and returns its PENDING ticket at once. A repeated
    /// idempotency key returns the original ticket.
    ///
    /// Accepts a [`pb::SubmitRequest`] or a [`Submit`](crate::Submit) builder.
    pub async fn submit(
        &self,
        request: impl Into<pb::SubmitRequest>,
    ) -> Result<pb::Ticket, ClientError> {
        Ok(self
            .inner
            .clone()
            .submit(request.into())
            .await?
            .into_inner())
    }

    /// Stores many requests in one call (`Gateway.SubmitBatch`): one answer
    /// per request, in order, each its ticket (as [`Client::submit`]
    /// returns it) or why that request alone was refused; one refused
    /// request does not stop the others. The stored ones are committed
    /// together (on the durable store, one disk sync for the batch).
    ///
    /// Up to [`SUBMIT_BATCH_LIMIT`](crate::SUBMIT_BATCH_LIMIT) requests per
    /// call, within the gateway's message limit (`--max-payload-bytes` plus
    /// 64 KiB for the whole call); an empty or larger batch fails the whole
    /// call (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED past the message
    /// limit), and so does a broken connection: then some requests may be
    /// stored, so give them idempotency keys to submit them again safely.
    /// A ticket found by its idempotency key comes without its `result`
    /// (read it with [`Client::get`]).
    pub async fn submit_batch<R: Into<pb::SubmitRequest>>(
        &self,
        requests: impl IntoIterator<Item = R>,
    ) -> Result<Vec<Result<pb::Ticket, ClientError>>, ClientError> {
        let requests: Vec<pb::SubmitRequest> = requests.into_iter().map(Into::into).collect();
        let sent = requests.len();
        let response = self
            .inner
            .clone()
            .submit_batch(pb::SubmitBatchRequest { requests })
            .await?
            .into_inner();
        if response.results.len() != sent {
            return Err(ClientError::Protocol(format!(
                "the gateway answered {} of {sent} requests of a batch",
                response.results.len()
            )));
        }
        Ok(response
            .results
            .into_iter()
            .map(|result| match (result.ticket, result.error) {
                (_, Some(error)) => Err(crate::streams::item_status(error)),
                (Some(ticket), None) => Ok(ticket),
                (None, None) => Err(ClientError::Protocol(
                    "the gateway answered a request of a batch with neither ticket nor error"
                        .into(),
                )),
            })
            .collect())
    }

    /// Submits and follows the new ticket in one call. The first event is the
    /// new ticket's SNAPSHOT (its id names the ticket); the stream ends after
    /// the terminal event.
    ///
    /// If the stream breaks after the first event it resumes with
    /// `WatchTicket`. If it breaks before, it is repeated only when the
    /// request has an idempotency key (otherwise the break is returned: the
    /// ticket may or may not exist).
    pub async fn execute(
        &self,
        request: impl Into<pb::SubmitRequest>,
    ) -> Result<EventStream, ClientError> {
        let request = request.into();
        let mut client = self.inner.clone();
        let stream = client.execute(request.clone()).await?.into_inner();
        Ok(EventStream::new(Resumer::new(
            client,
            self.resume.clone(),
            Target::Execute(Box::new(request)),
            None,
            stream,
        )))
    }

    /// The ticket's current state. With `wait`, a long-poll: the answer comes
    /// as soon as the ticket is terminal or when `wait` (capped by the
    /// gateway, 50 s by default) elapses, whichever is first.
    pub async fn get(&self, id: &str, wait: Option<Duration>) -> Result<pb::Ticket, ClientError> {
        let request = pb::GetTicketRequest {
            id: id.to_owned(),
            wait: wait.map(convert::duration_to_proto),
        };
        Ok(self.inner.clone().get_ticket(request).await?.into_inner())
    }

    /// Follows a ticket: a SNAPSHOT, then one event per change, ending after
    /// the terminal event. With `after_seq`, the partial-output chunks after
    /// that seq are replayed first (pass the highest seq you processed).
    ///
    /// The stream resumes itself after a broken connection; see
    /// [`EventStream`].
    pub async fn watch(
        &self,
        id: &str,
        after_seq: Option<u64>,
    ) -> Result<EventStream, ClientError> {
        let mut client = self.inner.clone();
        let request = pb::WatchTicketRequest {
            id: id.to_owned(),
            after_seq,
        };
        let stream = client.watch_ticket(request).await?.into_inner();
        Ok(EventStream::new(Resumer::new(
            client,
            self.resume.clone(),
            Target::Watch(id.to_owned()),
            after_seq,
            stream,
        )))
    }

    /// Cancels a ticket: a pending one at once, a running one by telling its
    /// worker to stop (a late result is discarded). `reason` ends up in the
    /// ticket's error message.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<pb::Ticket, ClientError> {
        let request = pb::CancelTicketRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .cancel_ticket(request)
            .await?
            .into_inner())
    }

    /// One page of tickets in creation order (oldest first, or newest first
    /// with `newest_first`), filtered by queue, states, metadata entries and
    /// creation time. Pass a page's `next_page_token` with the same
    /// `newest_first` to continue it.
    pub async fn list(
        &self,
        request: pb::ListTicketsRequest,
    ) -> Result<pb::ListTicketsResponse, ClientError> {
        Ok(self.inner.clone().list_tickets(request).await?.into_inner())
    }

    /// What this client's key is and may do: its name, role, tenant,
    /// whether it sees payloads, and every RPC it may call.
    pub async fn who_am_i(&self) -> Result<pb::WhoAmIResponse, ClientError> {
        Ok(self
            .inner
            .clone()
            .who_am_i(pb::WhoAmIRequest {})
            .await?
            .into_inner())
    }
}

/// The endpoint for `url` with the transport settings every connection of
/// this crate uses: no Nagle delay (request/reply latency matters more than
/// packet count), a bounded connect, and HTTP/2 keepalive so a dead peer is
/// noticed even on a silent stream.
///
/// No request timeout is set on purpose: it would also cut long-polls and
/// long-lived streams.
pub fn endpoint(url: impl Into<String>) -> Result<Endpoint, ClientError> {
    endpoint_with(url, None)
}

/// [`endpoint`] with TLS settings for an `https://` URL (`None`: the system
/// roots, no client certificate).
pub fn endpoint_with(url: impl Into<String>, tls: Option<&Tls>) -> Result<Endpoint, ClientError> {
    let url = normalize_url(url.into())?;
    let secure = url.starts_with("https://");
    if tls.is_some() && !secure {
        return Err(ClientError::InvalidUrl {
            url,
            reason: "TLS settings (a CA or client certificate) need an https:// URL".into(),
        });
    }
    let mut endpoint =
        Endpoint::from_shared(url.clone()).map_err(|err| ClientError::InvalidUrl {
            url: url.clone(),
            reason: err.to_string(),
        })?;
    if secure {
        let config = tls.cloned().unwrap_or_default().config();
        endpoint = endpoint
            .tls_config(config)
            .map_err(|err| ClientError::InvalidUrl {
                url,
                reason: format!("TLS settings refused: {err}"),
            })?;
    }
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// `http://` and `https://` URLs pass; a bare `host:port` gets `http://`;
/// anything else is refused.
fn normalize_url(url: String) -> Result<String, ClientError> {
    let url = url.trim().to_owned();
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(url);
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(ClientError::InvalidUrl {
            reason: format!("scheme {scheme:?} is not supported (use http:// or https://)"),
            url,
        });
    }
    if url.is_empty() {
        return Err(ClientError::InvalidUrl {
            url,
            reason: "empty".into(),
        });
    }
    Ok(format!("http://{url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("http://a:1".into()).ok(),
            Some("http://a:1".into())
        );
        assert_eq!(
            normalize_url(" 127.0.0.1:50051 ".into()).ok(),
            Some("http://127.0.0.1:50051".into())
        );
        assert_eq!(
            normalize_url("https://a:1".into()).ok(),
            Some("https://a:1".into())
        );
        assert!(matches!(
            normalize_url("ftp://a:1".into()),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            endpoint_with("http://a:1", Some(&Tls::default())),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            normalize_url("".into()),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(endpoint("http://[::1]:50051").is_ok());
        assert!(matches!(
            endpoint("http://bad host:1"),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[tokio::test]
    async fn lazy_client_reports_unreachable_gateway_as_transient() {
        // Port 9 (discard) on loopback: nothing listens there in CI.
        let client = Client::connect_lazy("http://127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"));
        let err = client.get("x", None).await.err();
        assert!(
            err.as_ref().is_some_and(ClientError::is_transient),
            "{err:?}"
        );
    }
}
