//! The worker protocol against a real gateway: each input opens one
//! `Workers.Connect` stream and plays a worker — Hello first or not,
//! heartbeats answering the gateway's pings or not, progress and results
//! for the leases it was given, for other tickets' or for made-up ones,
//! payloads of any bytes, drains, cancels through the Gateway API — then
//! closes its side.
//!
//! One gateway (memory store) serves every input: it starts lazily, on a
//! runtime of its own, the first time an input runs; a gateway per input
//! would cost more than the input. Before each input a few tickets are
//! submitted to the queue its Hello names, so that tasks are delivered.
//!
//! A finding is a panic anywhere in the process (libFuzzer aborts on any
//! thread's panic, the gateway's included), a gateway that stops answering
//! `ListTickets` after an input, or the gateway breaking the protocol as a
//! worker sees it:
//! - no Task on a stream whose first message was not an accepted Hello, and
//!   never more unanswered tasks than the Hello's `max_in_flight` (a task is
//!   answered by a result with an outcome that names its lease and its
//!   ticket);
//! - Welcome first, once; no Task after the gateway acknowledged a Drain;
//!   never the same lease twice;
//! - a Cancel names a lease delivered on this stream, a ResultAck a result
//!   sent on it; ping nonces increase.
//!
//! A stream that has not ended a second after the worker closed its side is
//! counted (see the stats line on stderr), not reported: it is a finding
//! only if the gateway then stops answering.

#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbitrary::Arbitrary;
use futures::FutureExt;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use asyncgate_proto::json::JsonValue;
use asyncgate_proto::v1 as pb;
use asyncgate_server::config::{Config, StoreConfig};
use pb::dispatch_message::Kind as Out;
use pb::worker_message::Kind as In;

/// The queues inputs serve (and tickets are submitted to).
const QUEUES: [&str; 3] = ["fz-a", "fz-b", "fz-c"];
/// Most steps of one input.
const MAX_STEPS: usize = 48;
/// How long one input may play (and then, how long its stream may take to
/// end once closed).
const BUDGET: Duration = Duration::from_secs(1);
/// How long a `Read` step waits for the gateway.
const READ_WAIT: Duration = Duration::from_millis(20);
/// The gateway's payload limit: small, so that inputs reach it.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

#[derive(Arbitrary, Debug, Clone)]
enum Queue {
    Known(u8),
    Text(String),
}

impl Queue {
    fn name(&self) -> String {
        match self {
            Queue::Known(i) => QUEUES[usize::from(*i) % QUEUES.len()].to_owned(),
            Queue::Text(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum InFlight {
    /// 1 to 4: small enough that credit runs out.
    Small(u8),
    Any(u32),
}

/// A Hello naming at least one queue (an empty list comes as `Step::Raw`).
#[derive(Arbitrary, Debug, Clone)]
struct Hello {
    name: Option<String>,
    queue: Queue,
    more_queues: Vec<Queue>,
    max_in_flight: InFlight,
}

impl Hello {
    fn to_pb(&self) -> pb::Hello {
        pb::Hello {
            worker_name: self.name.clone().unwrap_or_else(|| "fuzz".into()),
            queues: std::iter::once(&self.queue)
                .chain(&self.more_queues)
                .map(Queue::name)
                .collect(),
            max_in_flight: match self.max_in_flight {
                InFlight::Small(n) => u32::from(n % 4) + 1,
                InFlight::Any(n) => n,
            },
            // The harness counts tasks one message at a time.
            batches: false,
        }
    }
}

/// Which lease (and ticket) a message names.
#[derive(Arbitrary, Debug, Clone)]
enum Lease {
    /// The n-th task received on this stream (modulo those received).
    Delivered(u8),
    /// A task received on this stream, with another task's ticket id.
    Crossed(u8, u8),
    /// A task received on this stream, with a made-up ticket id.
    OtherTicket(u8, u128),
    /// Well-formed ids nobody issued.
    Unknown(u128, u128),
    /// Any text.
    Text(String, String),
}

#[derive(Arbitrary, Debug, Clone)]
enum Body {
    /// Any bytes, as an encoded `google.protobuf.Value`.
    Json(Vec<u8>),
    /// A well-formed value nested `depth % 32` lists or objects deep (the
    /// limit is 24).
    Nested {
        depth: u8,
        objects: bool,
    },
    Binary(Vec<u8>),
    /// `kib / 2` KiB of bytes: around the payload limit.
    Large {
        kib: u8,
    },
    Empty {
        content_type: String,
    },
}

impl Body {
    fn to_pb(&self) -> pb::Payload {
        use pb::payload::Kind;
        let (kind, content_type) = match self {
            Body::Json(bytes) => (
                Some(Kind::Json(JsonValue::from_encoded(bytes.clone()))),
                String::new(),
            ),
            Body::Nested { depth, objects } => (
                Some(Kind::Json(JsonValue::from_value(&nested(
                    *depth % 32,
                    *objects,
                )))),
                String::new(),
            ),
            Body::Binary(bytes) => (Some(Kind::Binary(bytes.clone().into())), String::new()),
            Body::Large { kib } => (
                Some(Kind::Binary(vec![0x5a; usize::from(*kib) * 512].into())),
                "application/octet-stream".into(),
            ),
            Body::Empty { content_type } => (None, content_type.clone()),
        };
        pb::Payload { kind, content_type }
    }
}

fn nested(depth: u8, objects: bool) -> prost_types::Value {
    use prost_types::value::Kind;
    let mut value = prost_types::Value {
        kind: Some(Kind::NumberValue(f64::from(depth))),
    };
    for _ in 0..depth {
        value = prost_types::Value {
            kind: Some(if objects {
                Kind::StructValue(prost_types::Struct {
                    fields: [("k".to_owned(), value)].into(),
                })
            } else {
                Kind::ListValue(prost_types::ListValue {
                    values: vec![value],
                })
            }),
        };
    }
    value
}

#[derive(Arbitrary, Debug, Clone)]
enum Nonce {
    Latest,
    Previous,
    Any(u64),
}

#[derive(Arbitrary, Debug, Clone)]
enum Step {
    Hello(Hello),
    Heartbeat(Nonce),
    Progress {
        lease: Lease,
        percent: u32,
        message: String,
        output: Option<Body>,
    },
    Success {
        lease: Lease,
        body: Body,
    },
    Failure {
        lease: Lease,
        code: i32,
        message: String,
        retryable: bool,
    },
    /// A result with no outcome.
    NoOutcome(Lease),
    Drain,
    /// A WorkerMessage with no kind.
    Empty,
    /// Any bytes, sent if they decode as a WorkerMessage.
    Raw(Vec<u8>),
    /// Wait briefly for the gateway's next message.
    Read,
    /// Cancel the n-th delivered ticket through the Gateway API.
    CancelTicket(u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct Seed {
    body: Body,
    priority: i8,
    max_attempts: u8,
    /// In 10 ms steps.
    attempt_timeout: Option<u8>,
}

/// How a stream starts.
#[derive(Arbitrary, Debug, Clone)]
enum First {
    /// With a Hello, after `seeds % 4` tickets like `seed` were submitted to
    /// its first queue.
    Hello { hello: Hello, seeds: u8, seed: Seed },
    /// With any other step.
    Step(Step),
    /// With the steps that follow.
    Nothing,
}

#[derive(Arbitrary, Debug, Clone)]
struct Input {
    first: First,
    steps: Vec<Step>,
}

/// The gateway every input talks to.
struct Harness {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    addr: SocketAddr,
    _running: asyncgate_server::Running,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (running, channel) = runtime.block_on(async {
            let mut config = Config {
                store: StoreConfig::Memory,
                heartbeat_interval: Duration::from_millis(300),
                lease_ttl: Duration::from_secs(2),
                max_payload_bytes: MAX_PAYLOAD_BYTES,
                ..Config::default()
            };
            config.engine.backoff.base = Duration::from_millis(10);
            config.engine.backoff.cap = Duration::from_millis(50);
            // Finished tickets go soon: the gateway runs for hours.
            config.engine.result_retention = Duration::from_secs(1);
            config.engine.tombstone_retention = Duration::from_secs(1);
            config.engine.max_pending_per_queue = 256;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let running = asyncgate_server::start_on(config, listener)
                .await
                .expect("the gateway starts");
            let channel = Channel::from_shared(format!("http://{}", running.local_addr()))
                .expect("url")
                .connect()
                .await
                .expect("connect");
            (running, channel)
        });
        Harness {
            runtime,
            addr: running.local_addr(),
            channel,
            _running: running,
        }
    })
}

/// Counters printed now and then, to show what inputs reach.
static INPUTS: AtomicU64 = AtomicU64::new(0);
static WITH_TASKS: AtomicU64 = AtomicU64::new(0);
static TASKS: AtomicU64 = AtomicU64::new(0);
static SLOW_ENDS: AtomicU64 = AtomicU64::new(0);

/// A lease id or ticket id as the gateway prints it (ids parse as UUIDs in
/// any of their forms), so that what was sent and what comes back compare.
fn canonical(id: &str) -> String {
    uuid::Uuid::parse_str(id).map_or_else(|_| id.to_owned(), |u| u.to_string())
}

/// What this worker has seen and sent on its stream.
#[derive(Default)]
struct Stream {
    /// `max_in_flight` of the Hello, if the first message sent was one the
    /// gateway accepts.
    accepted: Option<u32>,
    /// Whether any message was sent yet.
    sent_any: bool,
    /// (ticket id, lease id) of every Task, in order.
    delivered: Vec<(String, String)>,
    /// Leases of the delivered tasks.
    leases: HashSet<String>,
    /// Leases named by any result sent (canonical): acks answer these.
    resulted: HashSet<String>,
    /// Delivered leases answered: a result with an outcome naming the
    /// lease and its ticket. Only these give their credit back.
    answered: HashSet<String>,
    welcomed: bool,
    drained: bool,
    pings: Vec<u64>,
    messages: usize,
}

impl Stream {
    fn sending(&mut self, message: &pb::WorkerMessage) {
        if !self.sent_any {
            self.sent_any = true;
            if let Some(In::Hello(hello)) = &message.kind {
                self.accepted = Some(hello.max_in_flight);
            }
        }
        if let Some(In::Result(result)) = &message.kind {
            let lease = canonical(&result.lease_id);
            let ticket = canonical(&result.ticket_id);
            if result.outcome.is_some()
                && self
                    .delivered
                    .iter()
                    .any(|(t, l)| *l == lease && *t == ticket)
            {
                self.answered.insert(lease.clone());
            }
            self.resulted.insert(lease);
        }
    }

    fn received(&mut self, message: pb::DispatchMessage) {
        self.messages += 1;
        let kind = message
            .kind
            .expect("the gateway sent a DispatchMessage with no kind");
        if !matches!(kind, Out::Welcome(_)) {
            assert!(self.welcomed, "{kind:?} before the Welcome");
        }
        match kind {
            Out::Welcome(_) => {
                assert!(!self.welcomed, "a second Welcome");
                assert_eq!(self.messages, 1, "the Welcome is not the first message");
                assert!(self.accepted.is_some(), "a Welcome without a Hello first");
                self.welcomed = true;
            }
            Out::Task(task) => {
                let Some(max_in_flight) = self.accepted else {
                    panic!("a Task on a stream that did not start with a Hello: {task:?}");
                };
                assert!(!self.drained, "a Task after the Drain: {task:?}");
                assert!(
                    self.leases.insert(task.lease_id.clone()),
                    "lease {} delivered twice",
                    task.lease_id
                );
                self.delivered
                    .push((task.ticket_id.clone(), task.lease_id.clone()));
                let unanswered = self
                    .delivered
                    .iter()
                    .filter(|(_, lease)| !self.answered.contains(lease))
                    .count();
                assert!(
                    unanswered <= max_in_flight as usize,
                    "{unanswered} tasks unanswered, max_in_flight is {max_in_flight}"
                );
            }
            Out::Cancel(cancel) => assert!(
                self.leases.contains(&cancel.lease_id),
                "a Cancel for a lease never delivered here: {cancel:?}"
            ),
            Out::ResultAck(ack) => assert!(
                self.resulted.contains(&canonical(&ack.lease_id)),
                "an ack for a result never sent: {ack:?}"
            ),
            Out::Ping(ping) => {
                if let Some(last) = self.pings.last() {
                    assert!(ping.nonce > *last, "ping nonce {} after {last}", ping.nonce);
                }
                self.pings.push(ping.nonce);
            }
            Out::Drain(_) => self.drained = true,
        }
    }

    fn lease(&self, lease: &Lease) -> (String, String) {
        let pick = |n: u8| {
            (!self.delivered.is_empty())
                .then(|| self.delivered[usize::from(n) % self.delivered.len()].clone())
        };
        let unknown = |a: u128, b: u128| {
            (
                uuid::Uuid::from_u128(a).to_string(),
                uuid::Uuid::from_u128(b).to_string(),
            )
        };
        match lease {
            Lease::Delivered(n) => pick(*n).unwrap_or_else(|| unknown(u128::from(*n), 0)),
            Lease::Crossed(n, m) => match (pick(*n), pick(*m)) {
                (Some((_, lease)), Some((ticket, _))) => (ticket, lease),
                _ => unknown(0, u128::from(*n)),
            },
            Lease::OtherTicket(n, t) => match pick(*n) {
                Some((_, lease)) => (uuid::Uuid::from_u128(*t).to_string(), lease),
                None => unknown(*t, u128::from(*n)),
            },
            Lease::Unknown(a, b) => unknown(*a, *b),
            Lease::Text(ticket, lease) => (ticket.clone(), lease.clone()),
        }
    }

    fn message(&self, step: &Step) -> Option<pb::WorkerMessage> {
        let kind = match step {
            Step::Hello(hello) => In::Hello(hello.to_pb()),
            Step::Heartbeat(nonce) => In::Heartbeat(pb::Heartbeat {
                nonce: match nonce {
                    Nonce::Latest => self.pings.last().copied().unwrap_or(0),
                    Nonce::Previous => self.pings.iter().rev().nth(1).copied().unwrap_or(0),
                    Nonce::Any(n) => *n,
                },
            }),
            Step::Progress {
                lease,
                percent,
                message,
                output,
            } => {
                let (ticket_id, lease_id) = self.lease(lease);
                In::Progress(pb::TaskProgress {
                    ticket_id,
                    lease_id,
                    percent: *percent,
                    message: message.clone(),
                    output: output.as_ref().map(Body::to_pb),
                })
            }
            Step::Success { lease, body } => {
                let (ticket_id, lease_id) = self.lease(lease);
                In::Result(pb::TaskResult {
                    ticket_id,
                    lease_id,
                    outcome: Some(pb::task_result::Outcome::Success(body.to_pb())),
                })
            }
            Step::Failure {
                lease,
                code,
                message,
                retryable,
            } => {
                let (ticket_id, lease_id) = self.lease(lease);
                In::Result(pb::TaskResult {
                    ticket_id,
                    lease_id,
                    outcome: Some(pb::task_result::Outcome::Failure(pb::TaskFailure {
                        code: *code,
                        message: message.clone(),
                        retryable: *retryable,
                    })),
                })
            }
            Step::NoOutcome(lease) => {
                let (ticket_id, lease_id) = self.lease(lease);
                In::Result(pb::TaskResult {
                    ticket_id,
                    lease_id,
                    outcome: None,
                })
            }
            Step::Drain => In::Drain(pb::Drain {
                reason: "fuzz".into(),
            }),
            Step::Empty => return Some(pb::WorkerMessage::default()),
            Step::Raw(bytes) => return pb::WorkerMessage::decode(bytes.as_slice()).ok(),
            Step::Read | Step::CancelTicket(_) => return None,
        };
        Some(pb::WorkerMessage {
            kind: Some(kind),
            ..Default::default()
        })
    }
}

async fn seed(channel: &Channel, input: &Input) {
    let First::Hello { hello, seeds, seed } = &input.first else {
        return;
    };
    let mut gateway = pb::gateway_client::GatewayClient::new(channel.clone());
    for _ in 0..seeds % 4 {
        let request = pb::SubmitRequest {
            queue: hello.queue.name(),
            payload: Some(seed.body.to_pb()),
            priority: i32::from(seed.priority),
            max_attempts: u32::from(seed.max_attempts % 4),
            // Nothing waits for ever: the gateway runs for hours.
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            // 10 ms to 2.56 s.
            attempt_timeout: seed.attempt_timeout.map(|t| {
                let centis = i32::from(t) + 1;
                prost_types::Duration {
                    seconds: i64::from(centis / 100),
                    nanos: centis % 100 * 10_000_000,
                }
            }),
            ..Default::default()
        };
        // Refusals (a bad queue name or payload, a full queue) are fine.
        let _ = tokio::time::timeout(BUDGET, gateway.submit(request)).await;
    }
}

/// The gateway answers a call after the input; a panic otherwise.
async fn still_answers(harness: &Harness, input: &Input) {
    let list = |channel: Channel| async move {
        let mut gateway = pb::gateway_client::GatewayClient::new(channel);
        tokio::time::timeout(
            Duration::from_secs(5),
            gateway.list_tickets(pb::ListTicketsRequest {
                queue: QUEUES[0].into(),
                page_size: 1,
                ..Default::default()
            }),
        )
        .await
    };
    if let Ok(Ok(_)) = list(harness.channel.clone()).await {
        return;
    }
    // Not the shared connection's fault: a new one.
    let fresh = Channel::from_shared(format!("http://{}", harness.addr))
        .expect("url")
        .connect()
        .await;
    match fresh {
        Ok(channel) => match list(channel).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => panic!("ListTickets failed after this input: {status}\n{input:?}"),
            Err(_) => panic!("ListTickets hung after this input\n{input:?}"),
        },
        Err(error) => {
            panic!("the gateway refuses connections after this input: {error}\n{input:?}")
        }
    }
}

async fn play(harness: &Harness, input: &Input) {
    seed(&harness.channel, input).await;
    let (tx, rx) = mpsc::channel(MAX_STEPS + 1);
    let mut workers = pb::workers_client::WorkersClient::new(harness.channel.clone());
    let mut gateway = pb::gateway_client::GatewayClient::new(harness.channel.clone());
    let Ok(Ok(response)) =
        tokio::time::timeout(BUDGET, workers.connect(ReceiverStream::new(rx))).await
    else {
        return;
    };
    let mut inbound = response.into_inner();
    let mut stream = Stream::default();
    let mut open = true;
    let deadline = Instant::now() + BUDGET;
    let first = match &input.first {
        First::Hello { hello, .. } => Some(Step::Hello(hello.clone())),
        First::Step(step) => Some(step.clone()),
        First::Nothing => None,
    };
    for step in first.iter().chain(input.steps.iter().take(MAX_STEPS)) {
        if Instant::now() >= deadline || !open {
            break;
        }
        // Whatever already arrived, so that steps can name those tasks.
        while let Some(next) = inbound.message().now_or_never() {
            match next {
                Ok(Some(message)) => stream.received(message),
                Ok(None) | Err(_) => {
                    open = false;
                    break;
                }
            }
        }
        match step {
            Step::Read => match tokio::time::timeout(READ_WAIT, inbound.message()).await {
                Ok(Ok(Some(message))) => stream.received(message),
                Ok(Ok(None) | Err(_)) => open = false,
                Err(_) => {}
            },
            Step::CancelTicket(n) => {
                if !stream.delivered.is_empty() {
                    let (ticket, _) =
                        stream.delivered[usize::from(*n) % stream.delivered.len()].clone();
                    let _ = tokio::time::timeout(
                        BUDGET,
                        gateway.cancel_ticket(pb::CancelTicketRequest {
                            id: ticket,
                            ..Default::default()
                        }),
                    )
                    .await;
                }
            }
            step => {
                if let Some(message) = stream.message(step) {
                    stream.sending(&message);
                    if tx.try_send(message).is_err() {
                        break;
                    }
                }
            }
        }
    }
    // The worker closes its side: the stream must end.
    drop(tx);
    let ended = tokio::time::timeout(BUDGET, async {
        while let Ok(Some(message)) = inbound.message().await {
            stream.received(message);
        }
    })
    .await;
    if ended.is_err() {
        SLOW_ENDS.fetch_add(1, Ordering::Relaxed);
    }
    drop(inbound);
    if !stream.delivered.is_empty() {
        WITH_TASKS.fetch_add(1, Ordering::Relaxed);
        TASKS.fetch_add(stream.delivered.len() as u64, Ordering::Relaxed);
    }
    still_answers(harness, input).await;
}

fuzz_target!(|input: Input| {
    let harness = harness();
    harness.runtime.block_on(play(harness, &input));
    let inputs = INPUTS.fetch_add(1, Ordering::Relaxed) + 1;
    if inputs.is_power_of_two() || inputs % 100_000 == 0 {
        eprintln!(
            "worker_session: {inputs} inputs, {} with tasks ({} tasks), {} streams slow to end",
            WITH_TASKS.load(Ordering::Relaxed),
            TASKS.load(Ordering::Relaxed),
            SLOW_ENDS.load(Ordering::Relaxed),
        );
    }
});
