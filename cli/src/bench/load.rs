//! The timed, closed-loop loads: `concurrency` tasks, each sending its next
//! request as soon as the previous one finished, until the deadline. Each
//! task records into its own histogram (merged at the end); only requests
//! that start after the warmup count.
//!
//! Per request the hot path allocates what the generated code needs and
//! little more: the request is prebuilt and cloned (the payload is a
//! `Bytes`, so the clone shares it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use asyncgate_client::pb::gateway_client::GatewayClient;
use asyncgate_client::{Transport, pb};
use asyncgate_proto::bench::EchoRequest;
use asyncgate_proto::bench::echo_client::EchoClient;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::cleanup::Created;
use super::streamed::Streams;
use super::target::{MAX_MESSAGE, gateway_client};

/// What one request failed with: a gRPC code name (`UNAVAILABLE`, ...) or one
/// of the bench's own outcomes (`TICKET_FAILED`, `CLIENT_TIMEOUT`, ...).
pub(crate) type ErrorKey = &'static str;

/// The canonical name of a gRPC code, as in google.rpc.Code.
pub(crate) fn code_name(code: tonic::Code) -> ErrorKey {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_key(status: tonic::Status) -> ErrorKey {
    code_name(status.code())
}

/// `Ok` for SUCCEEDED, the error key of any other terminal state, `None`
/// while not terminal.
pub(crate) fn terminal_outcome(state: pb::TicketState) -> Option<Result<(), ErrorKey>> {
    match state {
        pb::TicketState::Succeeded => Some(Ok(())),
        pb::TicketState::Failed => Some(Err("TICKET_FAILED")),
        pb::TicketState::Cancelled => Some(Err("TICKET_CANCELLED")),
        pb::TicketState::Expired => Some(Err("TICKET_EXPIRED")),
        _ => None,
    }
}

/// Reads (and drops) whatever is left of a stream, briefly.
pub(crate) async fn read_to_end(stream: &mut tonic::Streaming<pb::TicketEvent>) {
    let _ = tokio::time::timeout(STREAM_END_WAIT, async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
}

/// How long a stream may take to end after its terminal event.
const STREAM_END_WAIT: Duration = Duration::from_secs(5);

/// Reads a ticket event stream until the terminal event; returns when it
/// arrived. Then reads on to the end of the stream (the gateway ends it right
/// after the terminal event): dropping a stream before its end makes h2 reset
/// it, and late frames on reset streams count toward the client's limit of
/// 1024 locally reset streams per connection, after which hyper closes the
/// connection (GOAWAY ENHANCE_YOUR_CALM, seen as RESOURCE_EXHAUSTED).
pub(crate) async fn until_terminal(
    stream: &mut tonic::Streaming<pb::TicketEvent>,
) -> Result<Instant, ErrorKey> {
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if let Some(outcome) = event
                    .ticket
                    .as_ref()
                    .and_then(|ticket| terminal_outcome(ticket.state()))
                {
                    let at = Instant::now();
                    read_to_end(stream).await;
                    return outcome.map(|()| at);
                }
            }
            Ok(None) => return Err("STREAM_ENDED_EARLY"),
            Err(status) => return Err(status_key(status)),
        }
    }
}

/// Which request a load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadKind {
    /// The baseline's unary echo.
    Echo,
    Submit,
    Execute,
    Poll,
    /// Submit, then this many watchers.
    WatchFanout(usize),
    /// Submit on the connection's SubmitStream.
    StreamSubmit,
    /// Submit on the connection's SubmitStream, the result from its
    /// WatchTickets stream.
    StreamE2e,
    /// SubmitBatch calls of this many tickets.
    SubmitBatch(usize),
}

/// One task's request maker.
enum Caller {
    Echo(EchoClient<Channel>, EchoRequest),
    /// With where to record the tickets' ids, when the run cleans up.
    Submit(
        GatewayClient<Transport>,
        pb::SubmitRequest,
        Option<Arc<Created>>,
    ),
    Execute(GatewayClient<Transport>, pb::SubmitRequest),
    Poll(GatewayClient<Transport>, pb::SubmitRequest),
    WatchFanout(GatewayClient<Transport>, pb::SubmitRequest, usize),
    Streamed(Streams, pb::SubmitRequest, Option<Arc<Created>>),
    SubmitBatch(
        GatewayClient<Transport>,
        pb::SubmitBatchRequest,
        Option<Arc<Created>>,
    ),
}

/// What one finished call did: a batch carries many tickets, each stored
/// or refused on its own; any other call is one request.
struct Done {
    /// When it was done.
    at: Instant,
    /// Requests (tickets) it stored or completed.
    ok: u64,
    /// Those it carried that were refused, by key.
    refused: Vec<ErrorKey>,
}

impl Done {
    fn one(at: Instant) -> Self {
        Self {
            at,
            ok: 1,
            refused: Vec::new(),
        }
    }
}

/// The long-poll `wait` of each GetTicket in poll mode.
const POLL_WAIT: prost_types::Duration = prost_types::Duration {
    seconds: 30,
    nanos: 0,
};

impl Caller {
    fn new(
        kind: LoadKind,
        channel: &Channel,
        request: &pb::SubmitRequest,
        echo: &EchoRequest,
        created: Option<Arc<Created>>,
        streams: Option<&Streams>,
    ) -> Caller {
        if let Some(streams) = streams {
            return Caller::Streamed(streams.clone(), request.clone(), created);
        }
        match kind {
            LoadKind::Echo => {
                let client = EchoClient::new(channel.clone())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
                let client = match crate::bench::target::compression() {
                    Some(encoding) => client.send_compressed(encoding).accept_compressed(encoding),
                    None => client,
                };
                Caller::Echo(client, echo.clone())
            }
            LoadKind::Submit => Caller::Submit(gateway_client(channel), request.clone(), created),
            LoadKind::SubmitBatch(size) => Caller::SubmitBatch(
                gateway_client(channel),
                pb::SubmitBatchRequest {
                    requests: vec![request.clone(); size],
                },
                created,
            ),
            LoadKind::Execute => Caller::Execute(gateway_client(channel), request.clone()),
            LoadKind::Poll => Caller::Poll(gateway_client(channel), request.clone()),
            LoadKind::WatchFanout(watchers) => {
                Caller::WatchFanout(gateway_client(channel), request.clone(), watchers)
            }
            // Opened by `run` and passed in as `streams`.
            LoadKind::StreamSubmit | LoadKind::StreamE2e => {
                unreachable!("stream loads are built with their streams")
            }
        }
    }

    /// Requests one call carries.
    fn units(&self) -> u64 {
        match self {
            Caller::SubmitBatch(_, batch, _) => batch.requests.len() as u64,
            _ => 1,
        }
    }

    /// One call, start to finish.
    async fn call(&mut self) -> Result<Done, ErrorKey> {
        match self {
            Caller::SubmitBatch(client, batch, created) => {
                submit_batch(client, batch, created.as_deref()).await
            }
            other => other.call_one().await.map(Done::one),
        }
    }

    /// One request, start to finish; `Ok` holds when it was done (the
    /// terminal event, before the stream's end is read).
    async fn call_one(&mut self) -> Result<Instant, ErrorKey> {
        match self {
            Caller::Echo(client, request) => client
                .echo(request.clone())
                .await
                .map(|_| Instant::now())
                .map_err(status_key),
            Caller::Submit(client, request, created) => {
                let reply = client.submit(request.clone()).await.map_err(status_key)?;
                let done = Instant::now();
                if let Some(created) = created {
                    created.push(reply.into_inner().id);
                }
                Ok(done)
            }
            // `call` counts a batch's tickets; here it is one call.
            Caller::SubmitBatch(client, batch, created) => {
                submit_batch(client, batch, created.as_deref())
                    .await
                    .map(|done| done.at)
            }
            Caller::Streamed(streams, request, created) => {
                streams.call(request, created.as_deref()).await?;
                Ok(Instant::now())
            }
            Caller::Execute(client, request) => {
                let mut stream = client
                    .execute(request.clone())
                    .await
                    .map_err(status_key)?
                    .into_inner();
                until_terminal(&mut stream).await
            }
            Caller::Poll(client, request) => {
                let ticket = client
                    .submit(request.clone())
                    .await
                    .map_err(status_key)?
                    .into_inner();
                let mut state = ticket.state();
                loop {
                    if let Some(outcome) = terminal_outcome(state) {
                        return outcome.map(|()| Instant::now());
                    }
                    let get = pb::GetTicketRequest {
                        id: ticket.id.clone(),
                        wait: Some(POLL_WAIT),
                    };
                    state = client
                        .get_ticket(get)
                        .await
                        .map_err(status_key)?
                        .into_inner()
                        .state();
                }
            }
            Caller::WatchFanout(client, request, watchers) => {
                let ticket = client
                    .submit(request.clone())
                    .await
                    .map_err(status_key)?
                    .into_inner();
                let mut all: FuturesUnordered<_> = (0..*watchers)
                    .map(|_| {
                        let mut client = client.clone();
                        let request = pb::WatchTicketRequest {
                            id: ticket.id.clone(),
                            after_seq: None,
                        };
                        async move {
                            let mut stream = client
                                .watch_ticket(request)
                                .await
                                .map_err(status_key)?
                                .into_inner();
                            until_terminal(&mut stream).await
                        }
                    })
                    .collect();
                // Done when the last watcher saw the terminal event.
                let mut outcome = Ok(Instant::now());
                while let Some(result) = all.next().await {
                    outcome = match (outcome, result) {
                        (Ok(last), Ok(at)) => Ok(last.max(at)),
                        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                    };
                }
                outcome
            }
        }
    }
}

/// One SubmitBatch call: its tickets stored, and refused by key.
async fn submit_batch(
    client: &mut GatewayClient<Transport>,
    batch: &pb::SubmitBatchRequest,
    created: Option<&Created>,
) -> Result<Done, ErrorKey> {
    let reply = client
        .submit_batch(batch.clone())
        .await
        .map_err(status_key)?
        .into_inner();
    let mut done = Done {
        at: Instant::now(),
        ok: 0,
        refused: Vec::new(),
    };
    for result in reply.results {
        match (result.ticket, result.error) {
            (Some(ticket), None) => {
                done.ok += 1;
                if let Some(created) = created {
                    created.push(ticket.id);
                }
            }
            (_, Some(error)) => done.refused.push(code_name(tonic::Code::from(error.code))),
            (None, None) => done.refused.push("PROTOCOL_ERROR"),
        }
    }
    Ok(done)
}

/// The measured part of one run.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// Requests started after the warmup.
    pub(crate) requests: u64,
    /// Those that succeeded (accepted; or reached SUCCEEDED).
    pub(crate) succeeded: u64,
    /// The others, by error key.
    pub(crate) errors: BTreeMap<ErrorKey, u64>,
    /// Latency of the successful ones, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// The measured time.
    pub(crate) duration: Duration,
    /// CPU the gateway's process used in the measured time (with an
    /// embedded gateway, the bench's own clients and workers too).
    pub(crate) cpu: Option<Duration>,
    /// What the run cost the redis-server the bench started (if it did).
    pub(crate) redis: super::redis_probe::RedisCost,
}

/// Latency range recorded: 1 µs to 1 hour, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Measured {
    fn empty(duration: Duration) -> Measured {
        Measured {
            requests: 0,
            succeeded: 0,
            errors: BTreeMap::new(),
            latency: histogram(),
            cpu: None,
            redis: Default::default(),
            duration,
        }
    }

    fn merge(&mut self, other: &Measured) {
        self.requests += other.requests;
        self.succeeded += other.succeeded;
        for (key, count) in &other.errors {
            *self.errors.entry(key).or_default() += count;
        }
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    /// Successful requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.succeeded as f64 / self.duration.as_secs_f64()
    }

    /// `[p50, p90, p99, max]` in µs; `None` without a successful request.
    pub(crate) fn latency_us(&self) -> Option<[u64; 4]> {
        if self.latency.is_empty() {
            return None;
        }
        let h = &self.latency;
        Some([
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.max(),
        ])
    }
}

/// What one run does.
pub(crate) struct LoadPlan {
    pub(crate) kind: LoadKind,
    pub(crate) concurrency: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) request_timeout: Duration,
    /// Shown in the progress lines; `None`: no progress lines.
    pub(crate) progress: Option<String>,
    /// Where submit mode records the tickets it created, to cancel them
    /// after the run (`None`: nothing to clean up).
    pub(crate) created: Option<Arc<Created>>,
    /// Whose CPU time to read over the measured time.
    pub(crate) cpu: super::target::RssSource,
    /// The redis-server the bench started for this run, to measure too.
    pub(crate) redis: Option<super::redis_probe::RedisProbe>,
}

/// Completed requests (warmup included) and errors so far, for the progress
/// line.
#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    errors: AtomicU64,
}

/// Runs `plan` with its tasks spread round-robin over `channels`.
pub(crate) async fn run(
    plan: &LoadPlan,
    channels: &[Channel],
    request: &pb::SubmitRequest,
    echo: &EchoRequest,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let counters = Arc::new(Counters::default());
    let ticker = plan
        .progress
        .clone()
        .map(|label| tokio::spawn(progress(label, counters.clone(), start, end)));

    let mut streams = Vec::new();
    if matches!(plan.kind, LoadKind::StreamSubmit | LoadKind::StreamE2e) {
        for channel in channels {
            match Streams::open(channel, plan.kind == LoadKind::StreamE2e).await {
                Ok(opened) => streams.push(opened),
                Err(error) => {
                    eprintln!("warning: could not open the bench's streams: {error}");
                    return Measured::empty(plan.duration);
                }
            }
        }
    }
    // The process's CPU over exactly the measured time.
    let cpu_source = plan.cpu;
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        let first = cpu_source.cpu();
        tokio::time::sleep_until(end).await;
        Some(cpu_source.cpu()?.saturating_sub(first?))
    });
    let redis = plan
        .redis
        .clone()
        .map(|probe| tokio::spawn(probe.measure(measure_from, end)));
    let mut tasks = JoinSet::new();
    for index in 0..plan.concurrency {
        let caller = Caller::new(
            plan.kind,
            &channels[index % channels.len()],
            request,
            echo,
            plan.created.clone(),
            streams.get(index % channels.len().max(1)),
        );
        let counters = counters.clone();
        let timeout = plan.request_timeout;
        let duration = plan.duration;
        tasks.spawn(async move {
            client_task(caller, counters, measure_from, end, timeout, duration).await
        });
    }
    let mut total = Measured::empty(plan.duration);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(measured) => total.merge(&measured),
            Err(error) => eprintln!("warning: a bench task failed: {error}"),
        }
    }
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    total.cpu = cpu.await.ok().flatten();
    if let Some(redis) = redis {
        total.redis = redis.await.unwrap_or_default();
    }
    total
}

async fn client_task(
    mut caller: Caller,
    counters: Arc<Counters>,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
    duration: Duration,
) -> Measured {
    let mut measured = Measured::empty(duration);
    let units = caller.units();
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let outcome = match tokio::time::timeout(timeout, caller.call()).await {
            Ok(outcome) => outcome,
            Err(_) => Err("CLIENT_TIMEOUT"),
        };
        let failed = match &outcome {
            Ok(done) => done.refused.len() as u64,
            Err(_) => units,
        };
        let carried = outcome
            .as_ref()
            .map_or(units, |done| done.ok + done.refused.len() as u64);
        counters.completed.fetch_add(carried, Ordering::Relaxed);
        counters.errors.fetch_add(failed, Ordering::Relaxed);
        if started >= measure_from {
            measured.requests += carried;
            match &outcome {
                Ok(done) => {
                    measured.succeeded += done.ok;
                    for key in &done.refused {
                        *measured.errors.entry(key).or_default() += 1;
                    }
                    if done.ok > 0 {
                        let elapsed = done.at.saturating_duration_since(started);
                        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                        measured.latency.saturating_record(micros.max(1));
                    }
                }
                Err(key) => *measured.errors.entry(key).or_default() += units,
            }
        }
        if failed > 0 {
            // A gateway that fails fast (refused, shutting down) must not
            // turn the loop into a busy spin.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    measured
}

/// One line on stderr per second: requests per second over the last second
/// and since the start.
async fn progress(label: String, counters: Arc<Counters>, start: Instant, end: Instant) {
    let mut ticks =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0;
    loop {
        let now = ticks.tick().await;
        if now > end + Duration::from_millis(500) {
            // Draining the requests still in flight: nothing new to say.
            continue;
        }
        let done = counters.completed.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        let elapsed = now.duration_since(start).as_secs_f64();
        eprintln!(
            "{label}: {elapsed:>5.1}s  {:>9.0} req/s (avg {:.0})  done {done}  errors {errors}",
            (done - last) as f64,
            done as f64 / elapsed,
        );
        last = done;
    }
}
