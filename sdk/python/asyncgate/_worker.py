"""`Worker`: serves queues over the `asyncgate.v1.Workers/Connect` stream.

Per connection (a *session*): Hello, Welcome, resend the results not yet
acknowledged, then one reader loop over the gateway's messages, while a
writer task drains the session's outbox into the stream. Any end of a
session (error, silence past three heartbeat intervals, end of stream,
Drain) is followed by a jittered, growing backoff and a new session, until a
graceful stop has nothing left to deliver.

Invariants (those of the Rust SDK's runner):
- A lease is in `_running` from its Task until its handler finished, then in
  `_unacked` until a final ResultAck arrives (any code but UNAVAILABLE,
  which sends it again a second later). Exactly one result per lease, and it
  survives reconnects; the gateway's lease check decides whether it counts.
- Handlers run under a semaphore of `max_in_flight` permits. The gateway
  never sends more than that, but after a broken connection the old
  session's handlers (told by cancellation that their lease is lost) may
  still hold permits when the new session's tasks arrive.
- Heartbeats jump the queue: the outbox has a control lane the writer
  empties first, so a worker streaming output still answers its pings.
- All state is touched only from the event loop's thread: no locks.

Cancellation (a Cancel from the gateway, or the lease lost with the
connection) reaches the handler as `asyncio.CancelledError` in its task;
`TaskContext.cancel_reason` says why. Its result is still sent (as a
CANCELLED failure) and discarded by the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import inspect
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol, Union

import grpc

from ._backoff import Backoff
from ._channel import TLS, endpoint
from ._errors import AsyncgateError, ProtocolError, from_rpc_error, is_transient
from ._h2 import DirectCall
from ._proto.v1 import ticket_pb2 as pb
from ._proto.v1 import workers_pb2
from ._types import PayloadLike, decode_payload, to_payload

__all__ = ["Worker", "TaskContext", "TaskError", "Permanent", "Handler", "HandlerFn", "CancelReason"]

log = logging.getLogger("asyncgate.worker")

#: Used when a Welcome names no heartbeat interval.
_DEFAULT_HEARTBEAT = 10.0
#: The gateway is taken for dead after this many heartbeat intervals of silence.
_WATCHDOG_INTERVALS = 3
#: A ResultAck UNAVAILABLE: send the result again after this long.
_RESEND_AFTER = 1.0
#: How long a draining worker waits for the gateway to close the stream once
#: everything is delivered.
_CLOSE_GRACE = 5.0
#: The Connect method (called with our own request encoding, see `_frame`).
_CONNECT = "/asyncgate.v1.Workers/Connect"
# gRPC codes as numbers, looked up once (an enum's .value on every ack adds up).
_OK = grpc.StatusCode.OK.value[0]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]


class TaskError(Exception):
    """A failure to report as the task's result.

    `retryable` is the worker's opinion: the gateway retries only while the
    ticket has attempts left. `code` is a gRPC code (OK is sent as UNKNOWN).
    """

    def __init__(
        self, message: str, *, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN, retryable: bool = True
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = grpc.StatusCode.UNKNOWN if code == grpc.StatusCode.OK else code
        self.retryable = retryable


class Permanent(TaskError):
    """A failure another attempt would repeat (bad input): the ticket fails at once."""

    def __init__(self, message: str, *, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message, code=code, retryable=False)


#: The reasons a running task is cancelled (the proto's `CancelReason`).
CancelReason = int


class TaskContext:
    """One attempt of one ticket, as its handler sees it."""

    __slots__ = ("_worker", "task", "cancel_reason", "_runner")

    def __init__(self, worker: Worker, task: workers_pb2.Task) -> None:
        self._worker = worker
        #: The Task message itself.
        self.task = task
        #: Why the gateway (or a lost connection) cancelled this attempt: a
        #: `workers_pb2.CANCEL_REASON_*` and a message; None while it runs.
        self.cancel_reason: tuple[CancelReason, str] | None = None
        #: The asyncio task running the handler (None for an inline handler).
        self._runner: asyncio.Task[None] | None = None

    @property
    def ticket_id(self) -> str:
        return self.task.ticket_id

    @property
    def lease_id(self) -> str:
        return self.task.lease_id

    @property
    def queue(self) -> str:
        return self.task.queue

    @property
    def attempt(self) -> int:
        """1 for the first attempt."""
        return self.task.attempt

    @property
    def max_attempts(self) -> int:
        return self.task.max_attempts

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.task.metadata)

    @property
    def deadline(self) -> _dt.datetime | None:
        """When this attempt times out (the gateway then cancels it); None when unbounded."""
        if not self.task.HasField("deadline"):
            return None
        return self.task.deadline.ToDatetime(tzinfo=_dt.timezone.utc)

    @property
    def payload(self) -> pb.Payload:
        """The request's payload message."""
        return self.task.payload

    @property
    def data(self) -> Any:
        """The request decoded: bytes for a binary body, else the JSON value."""
        return decode_payload(self.task.payload)

    async def progress(self, percent: int, message: str = "") -> None:
        """Reports progress (0 to 100); watchers see a PROGRESS event. Dropped while disconnected."""
        await self._report(workers_pb2.TaskProgress(percent=percent, message=message))

    async def output(self, chunk: PayloadLike, *, percent: int = 0, message: str = "") -> None:
        """Sends a partial-output chunk; watchers receive chunks in the order sent.

        Waits while the stream is congested (backpressure). Dropped while
        disconnected: the lease is most likely lost then, and the handler
        is about to be cancelled.
        """
        await self._report(workers_pb2.TaskProgress(percent=percent, message=message, output=to_payload(chunk)))

    async def _report(self, report: workers_pb2.TaskProgress) -> None:
        report.ticket_id = self.task.ticket_id
        report.lease_id = self.task.lease_id
        await self._worker._send_data((_PROGRESS, report.SerializeToString()))


class Handler(Protocol):
    """A class serving a queue: `handle` runs one attempt and returns its result."""

    async def handle(self, task: TaskContext) -> PayloadLike: ...


#: A function serving a queue: async (runs on the loop) or plain (runs in a thread).
HandlerFn = Callable[[TaskContext], Union[Awaitable[PayloadLike], PayloadLike]]


# The request stream carries bytes we encode ourselves (see `_connect`): a
# result or progress report is serialised once, when it is made, and a batch
# is those bytes joined, each behind its field's tag. Protobuf reads repeated
# fields in wire order, so the gateway sees them as if built by the message
# API. Tags are (field number << 3) | 2 (length-delimited) of WorkerMessage.
_PROGRESS, _RESULT, _RAW = 0, 1, 2
#: Lone report: WorkerMessage.progress (3) / .result (4).
_LONE_TAG = (b"\x1a", b"\x22")
#: Batched report: WorkerMessage.progress_batch (6) / .result_batch (7).
_BATCH_TAG = (b"\x32", b"\x3a")
# Reports that may share one message (when the gateway reads batches), and
# how many and how large such a message gets at most; a larger report goes
# alone. The gateway reads up to 10,000 per message.
_BATCH_COUNT = 1024
_BATCH_BYTES = 256 * 1024

#: One outbox entry: (_PROGRESS, TaskProgress bytes), (_RESULT, TaskResult
#: bytes) or (_RAW, a whole WorkerMessage's bytes).
_Item = tuple[int, bytes]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _string(tag: bytes, text: str) -> bytes:
    data = text.encode()
    return tag + _varint(len(data)) + data


def _result_bytes(task: workers_pb2.Task, outcome_tag: bytes, outcome: bytes) -> bytes:
    """A serialised TaskResult: ticket_id (1), lease_id (2), then success (3) or failure (4)."""
    return b"".join(
        (_string(b"\x0a", task.ticket_id), _string(b"\x12", task.lease_id), outcome_tag, _varint(len(outcome)), outcome)
    )


_SUCCESS_TAG, _FAILURE_TAG = b"\x1a", b"\x22"


def _frame(items: list[_Item]) -> bytes:
    """One WorkerMessage carrying `items`: a lone report as `kind`, several in the batch fields."""
    if len(items) == 1:
        kind, body = items[0]
        if kind == _RAW:
            return body
        return b"".join((_LONE_TAG[kind], _varint(len(body)), body))
    parts: list[bytes] = []
    for kind, body in items:
        parts += (_BATCH_TAG[kind], _varint(len(body)), body)
    return b"".join(parts)


def _identity(data: bytes) -> bytes:
    return data


#: The Drain a stopping worker sends.
_STOPPING_DRAIN: _Item = (
    _RAW,
    workers_pb2.WorkerMessage(drain=workers_pb2.Drain(reason="the worker is stopping")).SerializeToString(),
)


class _Outbox:
    """The messages for one session's request stream: heartbeats first, then data in order.

    Data is bounded so that a handler streaming output waits for the stream
    (backpressure) instead of filling memory; control messages are tiny and
    one per ping, so their lane is not.
    """

    def __init__(self, limit: int = 256) -> None:
        self._control: collections.deque[bytes] = collections.deque()
        self._data: collections.deque[_Item] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.closed = False

    def control(self, message: bytes) -> None:
        self._control.append(message)
        self._ready.set()

    def data_nowait(self, item: _Item) -> None:
        """Results and Drain: never wait (the bound is for output)."""
        self._data.append(item)
        self._ready.set()

    async def data(self, item: _Item) -> None:
        while len(self._data) >= self._limit and not self.closed:
            self._space.clear()
            await self._space.wait()
        self.data_nowait(item)

    def close(self) -> None:
        """Ends the request stream once everything queued is written."""
        self.closed = True
        self._ready.set()
        self._space.set()

    async def get(self, batches: bool) -> bytes | None:
        """The next message to write (with `batches`, the reports ready at once as one); None when closed and empty."""
        while True:
            if self._control:
                return self._control.popleft()
            data = self._data
            if data:
                first = data.popleft()
                items = [first]
                if batches and first[0] != _RAW:
                    room = _BATCH_BYTES - len(first[1])
                    while data and len(items) < _BATCH_COUNT:
                        kind, body = data[0]
                        if kind == _RAW or len(body) > room:
                            break
                        room -= len(body)
                        items.append(data.popleft())
                if len(data) < self._limit:
                    self._space.set()
                return _frame(items)
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()


class _Drained(Exception):
    """The session ended by a Drain; `stop` says whether the gateway asked us not to come back."""

    def __init__(self, stop: bool) -> None:
        super().__init__("drained")
        self.stop = stop


class Worker:
    """Serves queues: connects, runs handlers, reports results, reconnects.

    ```
    worker = Worker("http://127.0.0.1:50051", max_in_flight=8)

    @worker.handler("upper")
    async def upper(task: TaskContext) -> str:
        await task.progress(50, "upper-casing")
        return task.data.upper()

    await worker.run()   # until SIGTERM/SIGINT or worker.stop(): drains, then returns
    ```

    `queues` defaults to the queues with a handler. A handler's return value
    is the result (bytes: binary, anything else: JSON); raising `TaskError`
    reports that failure, `Permanent` a non-retryable one, and any other
    exception a retryable INTERNAL failure.
    """

    def __init__(
        self,
        url: str,
        queues: Iterable[str] | None = None,
        *,
        max_in_flight: int = 16,
        name: str | None = None,
        api_key: str | None = None,
        tls: TLS | bytes | bool | None = None,
        reconnect_backoff: tuple[float, float] = (0.1, 30.0),
        handshake_timeout: float = 10.0,
        shutdown_timeout: float = 30.0,
        direct_streams: bool = True,
    ) -> None:
        if not 1 <= max_in_flight <= 10_000:
            raise ValueError("max_in_flight must be 1 to 10000")
        self._endpoint = endpoint(url, api_key, tls)
        self._queues = list(queues or [])
        self.max_in_flight = max_in_flight
        self.name = name or f"python-{socket.gethostname()}-{os.getpid()}"
        self._backoff = Backoff(*reconnect_backoff)
        self._handshake_timeout = handshake_timeout
        self._shutdown_timeout = shutdown_timeout
        #: The Connect stream on the SDK's own HTTP/2 connection (`_h2.py`) rather than grpcio.
        self._direct = direct_streams
        #: queue -> the function running its tasks.
        self._handlers: dict[str, Callable[[TaskContext], Awaitable[PayloadLike]]] = {}
        #: lease id -> its context (which holds the asyncio task running it), from Task until the handler ends.
        self._running: dict[str, TaskContext] = {}
        #: lease id -> its result (an outbox item), until a final ResultAck.
        self._unacked: dict[str, _Item] = {}
        #: Queues whose handler is a plain function run inline (see `register`).
        self._inline: set[str] = set()
        #: Traffic counters (see `stats`).
        self._stats = {"messages_in": 0, "tasks": 0, "messages_out": 0}
        #: The current session's outbox; None while disconnected.
        self._outbox: _Outbox | None = None
        #: `max_in_flight` permits; a handler runs only while holding one.
        self._permits = asyncio.Semaphore(max_in_flight)
        #: Set by the first stop (wakes the reconnect backoff and starts the shutdown timer).
        self._stop_requested = asyncio.Event()
        #: Set while a session is established.
        self._connected = asyncio.Event()
        #: Set once the gateway sent Drain on the current session (see `wait_draining`).
        self._draining = asyncio.Event()
        #: Notified on every new session (see `wait_connected`).
        self._sessions = asyncio.Condition()
        #: A graceful stop was asked for (signal, `stop()`, or Drain with stop).
        self._stopping = False
        #: Stopped at once (second stop, shutdown timeout): nothing more is delivered.
        self._aborted = False
        #: The current session's task, so that an abort can end it.
        self._session_task: asyncio.Task[None] | None = None
        #: The current session id ("" while disconnected).
        self.session_id = ""
        #: The gateway's ping cadence in seconds, from the latest Welcome (0 before one).
        self.heartbeat_interval = 0.0
        #: Loop time of the gateway's latest message (the watchdog's reference).
        self._heard = 0.0

    # -- registration --------------------------------------------------------

    def handler(self, queue: str, *, inline: bool = False) -> Callable[[HandlerFn], HandlerFn]:
        """Decorator: the function serves `queue` (see `register` for `inline`)."""

        def register(fn: HandlerFn) -> HandlerFn:
            self.register(queue, fn, inline=inline)
            return fn

        return register

    def register(self, queue: str, handler: Handler | HandlerFn, *, inline: bool = False) -> None:
        """`handler` (a function, or an object with `async def handle(task)`) serves `queue`.

        `inline=True`, for a plain (non-async) function that is quick and
        never blocks: it is called right where its task arrives, on the event
        loop, with no asyncio task or thread per ticket (the fast path: a
        batch of tasks is handled in one pass). It cannot be cancelled (it
        has finished before a Cancel could arrive) and cannot await
        `task.progress`/`task.output`; if it returns an awaitable, that is
        awaited in a task of its own like an async handler.
        """
        fn: Any = handler.handle if hasattr(handler, "handle") else handler
        if not callable(fn):
            raise TypeError("a handler is a function or has a handle(task) method")
        self._inline.discard(queue)
        if inspect.iscoroutinefunction(fn):
            if inline:
                raise TypeError("inline=True is for plain functions; an async handler runs in its own task")
            self._handlers[queue] = fn
        elif inline:
            self._handlers[queue] = fn
            self._inline.add(queue)
        else:
            # Blocking code must not stall the loop (and with it the heartbeats).
            async def in_thread(task: TaskContext, fn: Any = fn) -> PayloadLike:
                result = await asyncio.to_thread(fn, task)
                return await result if inspect.isawaitable(result) else result

            self._handlers[queue] = in_thread
        if queue not in self._queues:
            self._queues.append(queue)

    # -- life cycle ----------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Tasks whose handler is running."""
        return len(self._running)

    @property
    def stats(self) -> dict[str, int]:
        """Counters since creation: `messages_in` (gateway messages read), `tasks` (tasks
        received), `messages_out` (messages written); tasks per message show the batching."""
        return dict(self._stats)

    async def wait_connected(self, *, other_than: str | None = None) -> str:
        """Waits until a session is established (one whose id is not `other_than`); its id.

        `other_than=old_id` waits for the reconnect after a session ended.
        """
        async with self._sessions:
            await self._sessions.wait_for(lambda: self._connected.is_set() and self.session_id != other_than)
            return self.session_id

    async def wait_draining(self) -> None:
        """Waits until the gateway has sent Drain on the current session: no new task will come on it.

        After `stop()` this is the gateway's confirmation; it also fires when
        the gateway shuts down or an operator drains this worker.
        """
        await self._draining.wait()

    def stop(self) -> None:
        """Graceful stop: no new tasks, finish and deliver the running ones, then `run` returns.

        A second call (a second SIGINT/SIGTERM) cancels everything at once;
        the gateway requeues what was left.
        """
        if self._stopping:
            self._abort("second stop")
            return
        log.info("stopping: finishing %d running task(s)", len(self._running))
        self._stopping = True
        self._stop_requested.set()
        if self._outbox is not None:
            self._outbox.data_nowait(_STOPPING_DRAIN)

    def _abort(self, why: str) -> None:
        """Stops at once: handlers cancelled, undelivered results dropped, the session ended."""
        log.warning("%s: abandoning %d running task(s)", why, len(self._running))
        self._stopping = self._aborted = True
        self._stop_requested.set()
        for context in list(self._running.values()):
            if context._runner is not None:
                context._runner.cancel()
        self._running.clear()
        self._unacked.clear()
        if self._session_task is not None:
            self._session_task.cancel()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serves until stopped (SIGINT/SIGTERM when `handle_signals` and in the main thread, or `stop()`)."""
        if not self._queues or not all(queue in self._handlers for queue in self._queues):
            missing = [queue for queue in self._queues if queue not in self._handlers]
            raise ValueError(f"no handler for the queues {missing}" if missing else "no queue to serve")
        loop = asyncio.get_running_loop()
        signals: list[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, self.stop)
                    signals.append(signum)
                except (NotImplementedError, RuntimeError):  # not on this platform
                    pass
        stopper = asyncio.create_task(self._stop_timer())
        try:
            await self._serve()
        finally:
            stopper.cancel()
            for signum in signals:
                loop.remove_signal_handler(signum)
            for context in list(self._running.values()):
                if context._runner is not None:
                    context._runner.cancel()
            log.info("stopped")

    async def _stop_timer(self) -> None:
        """After a stop, waits `shutdown_timeout`, then abandons what is left."""
        await self._stop_requested.wait()
        await asyncio.sleep(self._shutdown_timeout)
        self._abort("shutdown timeout")

    def _finished(self) -> bool:
        return self._aborted or (self._stopping and not self._running and not self._unacked)

    async def _serve(self) -> None:
        """Sessions until stopped, with backoff in between."""
        while not self._finished():
            self._session_task = session = asyncio.create_task(self._session())
            try:
                await asyncio.wait({session})
            finally:
                session.cancel()  # when `run` itself is cancelled
            try:
                session.result()
            except asyncio.CancelledError:
                pass  # an abort
            except _Drained as drained:
                if drained.stop:
                    log.info("the gateway drained this worker for good")
                    self._stopping = True
                    self._stop_requested.set()
            except AsyncgateError as error:
                if not is_transient(error) and error.code in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    # The gateway refused this worker: retrying cannot help.
                    raise
                log.warning("connection lost: %s", error)
            except (asyncio.TimeoutError, ConnectionError) as error:
                log.warning("connection lost: %r", error)
            except Exception:  # a bug here or in grpcio: log it, keep serving after the backoff
                log.exception("the session failed unexpectedly")
            finally:
                self._outbox = None
                self.session_id = ""
                self._session_task = None
                self._connected.clear()
            self._leases_lost()
            if self._finished():
                return
            delay = self._backoff.next_delay()
            log.info("reconnecting in %.2fs", delay)
            try:
                # A stop while waiting re-checks at once (maybe nothing is left to deliver).
                await asyncio.wait_for(self._wait_stop_change(), delay)
            except asyncio.TimeoutError:
                pass

    async def _wait_stop_change(self) -> None:
        if self._stopping:
            await asyncio.get_running_loop().create_future()  # only the backoff delay ends this wait
        await self._stop_requested.wait()

    def _leases_lost(self) -> None:
        """The session ended with handlers running: their leases are most likely reassigned.

        Tell them (cancellation frees their permits for the next session's
        tasks); whatever they return is sent after the reconnect, where the
        gateway's lease check decides whether it counts.
        """
        for context in self._running.values():
            if context.cancel_reason is None and context._runner is not None:
                context.cancel_reason = (
                    workers_pb2.CANCEL_REASON_LEASE_LOST,
                    "the connection to the gateway was lost; the lease has probably been reassigned",
                )
                context._runner.cancel()

    async def _session(self) -> None:
        """One Connect stream, from Hello to its end."""
        channel: grpc.aio.Channel | None = None
        call: Any
        writer: asyncio.Task[None] | None = None
        try:
            # Requests go as the bytes we encode (see `_frame`); replies are parsed by protobuf.
            if self._direct:
                call = DirectCall(self._endpoint, _CONNECT, workers_pb2.DispatchMessage.FromString)
            else:
                channel = self._endpoint.channel()
                connect = channel.stream_stream(
                    _CONNECT, request_serializer=_identity, response_deserializer=workers_pb2.DispatchMessage.FromString
                )
                call = connect(metadata=self._endpoint.metadata)
            hello = workers_pb2.Hello(
                worker_name=self.name, queues=self._queues, max_in_flight=self.max_in_flight, batches=True
            )
            try:
                await call.write(workers_pb2.WorkerMessage(hello=hello).SerializeToString())
                first = await asyncio.wait_for(call.read(), self._handshake_timeout)
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from error
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise ProtocolError(f"expected Welcome, got {first!r}")
            welcome = first.welcome
            heartbeat = welcome.heartbeat_interval.ToTimedelta().total_seconds() or _DEFAULT_HEARTBEAT
            self.session_id = welcome.session_id
            self.heartbeat_interval = heartbeat
            self._backoff.reset()
            log.info("connected: session %s, queues %s", welcome.session_id, ",".join(self._queues))
            self._outbox = outbox = _Outbox()
            self._draining.clear()
            writer = asyncio.create_task(self._write(call, outbox, welcome.batches))
            # Results a broken connection left unacknowledged go first.
            for item in self._unacked.values():
                outbox.data_nowait(item)
            if self._stopping:
                outbox.data_nowait(_STOPPING_DRAIN)
            self._connected.set()
            async with self._sessions:
                self._sessions.notify_all()
            await self._read(call, outbox, heartbeat)
        finally:
            if writer is not None:
                writer.cancel()
            if channel is not None:
                await channel.close()
            else:
                call.cancel()

    async def _write(self, call: grpc.aio.StreamStreamCall, outbox: _Outbox, batches: bool) -> None:
        """Drains the outbox into the stream; ends our side once the outbox is closed.

        With `batches` (the gateway's Welcome said it reads them), the progress
        reports and results ready at once go as one message. One write is in
        flight at a time, so whatever handlers finish meanwhile goes in the next.
        """
        stats = self._stats
        try:
            while (message := await outbox.get(batches)) is not None:
                await call.write(message)
                stats["messages_out"] += 1
            await call.done_writing()
        except (AsyncgateError, grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, RuntimeError) as error:
            # The reader sees the broken stream too and ends the session.
            log.debug("writer stopped: %r", error)

    async def _watch(self, call: grpc.aio.StreamStreamCall, outbox: _Outbox, heartbeat: float, silent: list[float]) -> None:
        """Ends the call once the gateway has been silent too long (`_read` notes each message's time).

        A timer beside the reads, rather than a timeout around each read:
        arming and disarming one per message costs a busy worker more than
        the whole check.
        """
        loop = asyncio.get_running_loop()
        watchdog = _WATCHDOG_INTERVALS * heartbeat
        while True:
            limit = _CLOSE_GRACE if outbox.closed else watchdog
            quiet = loop.time() - self._heard
            if quiet >= limit:
                silent.append(limit)
                call.cancel()
                return
            # Wake early enough to notice the outbox closing (a shorter limit).
            await asyncio.sleep(min(limit - quiet, _CLOSE_GRACE / 4))

    async def _read(self, call: grpc.aio.StreamStreamCall, outbox: _Outbox, heartbeat: float) -> None:
        """The gateway's messages until the stream ends; raises `_Drained` after a Drain."""
        draining: bool | None = None  # None: not draining; else Drain.stop
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        silent: list[float] = []
        watchdog = asyncio.create_task(self._watch(call, outbox, heartbeat, silent))
        stats, start, acknowledged = self._stats, self._start, self._acknowledged
        try:
            while True:
                try:
                    message = await call.read()
                except (asyncio.CancelledError, AsyncgateError, grpc.aio.AioRpcError) as error:
                    if not silent or self._aborted:
                        if isinstance(error, grpc.aio.AioRpcError):
                            raise from_rpc_error(error) from error
                        raise  # the call failed, or our own task is cancelled (an abort)
                    # The watchdog ended the call.
                    if not outbox.closed:
                        raise ConnectionError(f"the gateway was silent for {silent[0]:.1f}s") from None
                    message = grpc.aio.EOF
                if message is grpc.aio.EOF:
                    log.info("the gateway closed the stream")
                    if draining is not None:
                        raise _Drained(draining)
                    return
                self._heard = loop.time()
                stats["messages_in"] += 1
                # A batch (we asked for them in our Hello): tasks, then acks,
                # then the message's own kind, each as if it came alone.
                tasks = message.task_batch
                if tasks:
                    stats["tasks"] += len(tasks)
                    for task in tasks:
                        start(task)
                for ack in message.ack_batch:
                    acknowledged(ack)
                kind = message.WhichOneof("kind")
                if kind is None:
                    pass
                elif kind == "ping":
                    outbox.control(workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(nonce=message.ping.nonce)).SerializeToString())
                elif kind == "task":
                    stats["tasks"] += 1
                    start(message.task)
                elif kind == "cancel":
                    self._cancel(message.cancel)
                elif kind == "result_ack":
                    acknowledged(message.result_ack)
                elif kind == "drain":
                    # The gateway shuts down, drains us, or answers our Drain: no
                    # new tasks will come on this stream.
                    log.info("draining: %s", message.drain.reason or "(no reason)")
                    draining = bool(draining) or message.drain.stop
                    self._draining.set()
                if draining is not None and not self._running and not self._unacked and not outbox.closed:
                    # Everything is delivered: end our side; the gateway ends its.
                    outbox.close()
        finally:
            watchdog.cancel()

    # -- tasks -----------------------------------------------------------------

    def _start(self, task: workers_pb2.Task) -> None:
        context = TaskContext(self, task)
        queue = task.queue
        if queue in self._inline:
            self._inline_task(context, self._handlers[queue])
            return
        self._running[task.lease_id] = context
        context._runner = self._spawn(self._run_task(context))

    if sys.version_info >= (3, 12):

        @staticmethod
        def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            # The handler runs at once up to its first real wait (correctly,
            # as its own task): a quick one is done before the next task of
            # the batch is looked at, with no trip through the event loop.
            return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)  # type: ignore[call-arg]

    else:  # pragma: no cover - Python 3.11 and older

        @staticmethod
        def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(coro)

    def _inline_task(self, context: TaskContext, handler: Callable[[TaskContext], Any]) -> None:
        """Runs an inline handler where its task arrived and records the result at once."""
        try:
            value = handler(context)
        except BaseException as error:  # noqa: BLE001 - any failure is the task's result
            self._record(context.task, self._failure(context, error))
            if not isinstance(error, Exception):
                raise
            return
        if inspect.isawaitable(value):
            self._running[context.task.lease_id] = context
            context._runner = self._spawn(self._run_task(context, value))
            return
        self._record(context.task, self._success(value))

    def _cancel(self, cancel: workers_pb2.Cancel) -> None:
        context = self._running.get(cancel.lease_id)
        if context is None or context._runner is None:
            return
        log.info("cancelled: %s (%s)", cancel.ticket_id, cancel.message)
        context.cancel_reason = (cancel.reason, cancel.message)
        context._runner.cancel()

    @staticmethod
    def _success(value: PayloadLike) -> tuple[bytes, bytes]:
        return _SUCCESS_TAG, to_payload(value).SerializeToString()

    @staticmethod
    def _failure(context: TaskContext, error: BaseException) -> tuple[bytes, bytes]:
        if isinstance(error, asyncio.CancelledError):
            reason = context.cancel_reason[1] if context.cancel_reason else "the worker stopped"
            failure = workers_pb2.TaskFailure(code=_CANCELLED, message=reason)
        elif isinstance(error, TaskError):
            failure = workers_pb2.TaskFailure(code=error.code.value[0], message=error.message, retryable=error.retryable)
        else:  # a bug in the handler: another attempt may go better
            log.error("task %s failed", context.task.ticket_id, exc_info=error)
            failure = workers_pb2.TaskFailure(code=_INTERNAL, message=f"{type(error).__name__}: {error}", retryable=True)
        return _FAILURE_TAG, failure.SerializeToString()

    async def _run_task(self, context: TaskContext, pending: Awaitable[PayloadLike] | None = None) -> None:
        """Runs the handler of one lease under a permit (or awaits what an inline one returned) and records its one result."""
        task = context.task
        try:
            if pending is not None:
                value = await pending
            else:
                handler = self._handlers.get(task.queue)
                async with self._permits:
                    if handler is None:
                        raise Permanent(
                            f"this worker has no handler for queue {task.queue!r}", code=grpc.StatusCode.UNIMPLEMENTED
                        )
                    value = await handler(context)
            outcome = self._success(value)
        except (Exception, asyncio.CancelledError) as error:
            outcome = self._failure(context, error)
        if self._aborted:
            return
        self._running.pop(task.lease_id, None)
        self._record(task, outcome)

    def _record(self, task: workers_pb2.Task, outcome: tuple[bytes, bytes]) -> None:
        """Keeps the lease's one result until its final ResultAck and queues it for the stream."""
        if self._aborted:
            return
        item = (_RESULT, _result_bytes(task, *outcome))
        self._unacked[task.lease_id] = item
        if self._outbox is not None:
            self._outbox.data_nowait(item)

    async def _send_data(self, item: _Item) -> None:
        """Progress and output of a running task; dropped while disconnected."""
        if self._outbox is not None and not self._outbox.closed:
            await self._outbox.data(item)

    def _acknowledged(self, ack: workers_pb2.ResultAck) -> None:
        code = ack.code
        if code == _OK:
            self._unacked.pop(ack.lease_id, None)
            return
        if code == _UNAVAILABLE and ack.lease_id in self._unacked:
            # The gateway could not store it yet: keep it and send it again shortly.
            item = self._unacked[ack.lease_id]
            asyncio.get_running_loop().call_later(_RESEND_AFTER, self._resend, ack.lease_id, item)
            return
        self._unacked.pop(ack.lease_id, None)
        if code != _ALREADY_EXISTS:
            log.warning("result for %s not recorded: code %d: %s", ack.ticket_id, code, ack.message)

    def _resend(self, lease_id: str, item: _Item) -> None:
        if lease_id in self._unacked and self._outbox is not None and not self._outbox.closed:
            self._outbox.data_nowait(item)
