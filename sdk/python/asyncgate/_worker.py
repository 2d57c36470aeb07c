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
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, Union

import grpc

from ._aio import within
from ._backoff import Backoff
from ._channel import TLS, endpoint
from ._errors import AsyncgateError, ProtocolError, from_rpc_error, is_transient
from ._proto.v1 import ticket_pb2 as pb
from ._proto.v1 import workers_pb2, workers_pb2_grpc
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

    def __init__(self, worker: Worker, task: workers_pb2.Task) -> None:
        self._worker = worker
        #: The Task message itself.
        self.task = task
        #: Why the gateway (or a lost connection) cancelled this attempt: a
        #: `workers_pb2.CANCEL_REASON_*` and a message; None while it runs.
        self.cancel_reason: tuple[CancelReason, str] | None = None

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
        await self._worker._send_data(workers_pb2.WorkerMessage(progress=report))


class Handler(Protocol):
    """A class serving a queue: `handle` runs one attempt and returns its result."""

    async def handle(self, task: TaskContext) -> PayloadLike: ...


#: A function serving a queue: async (runs on the loop) or plain (runs in a thread).
HandlerFn = Callable[[TaskContext], Union[Awaitable[PayloadLike], PayloadLike]]


class _Outbox:
    """The messages for one session's request stream: heartbeats first, then data in order.

    Data is bounded so that a handler streaming output waits for the stream
    (backpressure) instead of filling memory; control messages are tiny and
    one per ping, so their lane is not.
    """

    def __init__(self, limit: int = 256) -> None:
        self._control: collections.deque[workers_pb2.WorkerMessage] = collections.deque()
        self._data: collections.deque[workers_pb2.WorkerMessage] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.closed = False

    def control(self, message: workers_pb2.WorkerMessage) -> None:
        self._control.append(message)
        self._ready.set()

    def data_nowait(self, message: workers_pb2.WorkerMessage) -> None:
        """Results and Drain: never wait (the bound is for output)."""
        self._data.append(message)
        self._ready.set()

    async def data(self, message: workers_pb2.WorkerMessage) -> None:
        while len(self._data) >= self._limit and not self.closed:
            self._space.clear()
            await self._space.wait()
        self.data_nowait(message)

    def close(self) -> None:
        """Ends the request stream once everything queued is written."""
        self.closed = True
        self._ready.set()
        self._space.set()

    async def get(self) -> workers_pb2.WorkerMessage | None:
        """The next message to write; None when closed and empty."""
        while True:
            if self._control:
                return self._control.popleft()
            if self._data:
                message = self._data.popleft()
                if len(self._data) < self._limit:
                    self._space.set()
                return message
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()

    def take_batchable(self, count: int, size: int) -> list[workers_pb2.WorkerMessage]:
        """Up to `count` more progress reports and results at the head of the data, `size` bytes in all."""
        taken: list[workers_pb2.WorkerMessage] = []
        while self._data and len(taken) < count:
            head = self._data[0]
            if head.WhichOneof("kind") not in _BATCHABLE or head.ByteSize() > size:
                break
            size -= head.ByteSize()
            taken.append(self._data.popleft())
        if len(self._data) < self._limit:
            self._space.set()
        return taken


# Reports that may share one message (when the gateway reads batches), and
# how many and how large such a message gets at most.
_BATCHABLE = ("progress", "result")
_BATCH_COUNT = 64
_BATCH_BYTES = 64 * 1024


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
        #: queue -> the function running its tasks.
        self._handlers: dict[str, Callable[[TaskContext], Awaitable[PayloadLike]]] = {}
        #: lease id -> (the task running it, its context), from Task until the handler ends.
        self._running: dict[str, tuple[asyncio.Task[None], TaskContext]] = {}
        #: lease id -> its result, until a final ResultAck.
        self._unacked: dict[str, workers_pb2.WorkerMessage] = {}
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

    # -- registration --------------------------------------------------------

    def handler(self, queue: str) -> Callable[[HandlerFn], HandlerFn]:
        """Decorator: the function serves `queue`."""

        def register(fn: HandlerFn) -> HandlerFn:
            self.register(queue, fn)
            return fn

        return register

    def register(self, queue: str, handler: Handler | HandlerFn) -> None:
        """`handler` (a function, or an object with `async def handle(task)`) serves `queue`."""
        fn: Any = handler.handle if hasattr(handler, "handle") else handler
        if not callable(fn):
            raise TypeError("a handler is a function or has a handle(task) method")
        if inspect.iscoroutinefunction(fn):
            self._handlers[queue] = fn
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
            self._outbox.data_nowait(workers_pb2.WorkerMessage(drain=workers_pb2.Drain(reason="the worker is stopping")))

    def _abort(self, why: str) -> None:
        """Stops at once: handlers cancelled, undelivered results dropped, the session ended."""
        log.warning("%s: abandoning %d running task(s)", why, len(self._running))
        self._stopping = self._aborted = True
        self._stop_requested.set()
        for running, _ in list(self._running.values()):
            running.cancel()
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
            for running, _ in list(self._running.values()):
                running.cancel()
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
        for running, context in self._running.values():
            if context.cancel_reason is None:
                context.cancel_reason = (
                    workers_pb2.CANCEL_REASON_LEASE_LOST,
                    "the connection to the gateway was lost; the lease has probably been reassigned",
                )
                running.cancel()

    async def _session(self) -> None:
        """One Connect stream, from Hello to its end."""
        channel = self._endpoint.channel()
        writer: asyncio.Task[None] | None = None
        try:
            stub = workers_pb2_grpc.WorkersStub(channel)
            call = stub.Connect(metadata=self._endpoint.metadata)
            hello = workers_pb2.Hello(
                worker_name=self.name, queues=self._queues, max_in_flight=self.max_in_flight, batches=True
            )
            try:
                await call.write(workers_pb2.WorkerMessage(hello=hello))
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
            for message in self._unacked.values():
                outbox.data_nowait(message)
            if self._stopping:
                outbox.data_nowait(workers_pb2.WorkerMessage(drain=workers_pb2.Drain(reason="the worker is stopping")))
            self._connected.set()
            async with self._sessions:
                self._sessions.notify_all()
            await self._read(call, outbox, heartbeat)
        finally:
            if writer is not None:
                writer.cancel()
            await channel.close()

    async def _write(self, call: grpc.aio.StreamStreamCall, outbox: _Outbox, batches: bool) -> None:
        """Drains the outbox into the stream; ends our side once the outbox is closed.

        With `batches` (the gateway's Welcome said it reads them), the progress
        reports and results ready at once go as one message.
        """
        try:
            while (message := await outbox.get()) is not None:
                if batches and message.WhichOneof("kind") in _BATCHABLE:
                    more = outbox.take_batchable(_BATCH_COUNT - 1, _BATCH_BYTES - message.ByteSize())
                    if more:
                        batch = workers_pb2.WorkerMessage()
                        for report in (message, *more):
                            if report.WhichOneof("kind") == "progress":
                                batch.progress_batch.append(report.progress)
                            else:
                                batch.result_batch.append(report.result)
                        message = batch
                await call.write(message)
            await call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            # The reader sees the broken stream too and ends the session.
            log.debug("writer stopped: %r", error)

    async def _read(self, call: grpc.aio.StreamStreamCall, outbox: _Outbox, heartbeat: float) -> None:
        """The gateway's messages until the stream ends; raises `_Drained` after a Drain."""
        draining: bool | None = None  # None: not draining; else Drain.stop
        watchdog = _WATCHDOG_INTERVALS * heartbeat
        while True:
            timeout = _CLOSE_GRACE if outbox.closed else watchdog
            try:
                message = await within(call.read(), timeout)
            except asyncio.TimeoutError:
                if outbox.closed:
                    call.cancel()
                    message = grpc.aio.EOF
                else:
                    raise ConnectionError(f"the gateway was silent for {timeout:.1f}s") from None
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from error
            if message is grpc.aio.EOF:
                log.info("the gateway closed the stream")
                if draining is not None:
                    raise _Drained(draining)
                return
            # A batch (we asked for them in our Hello): tasks, then acks,
            # then the message's own kind, each as if it came alone.
            for task in message.task_batch:
                self._start(task)
            for ack in message.ack_batch:
                self._acknowledged(ack)
            kind = message.WhichOneof("kind")
            if kind == "ping":
                outbox.control(workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(nonce=message.ping.nonce)))
            elif kind == "task":
                self._start(message.task)
            elif kind == "cancel":
                self._cancel(message.cancel)
            elif kind == "result_ack":
                self._acknowledged(message.result_ack)
            elif kind == "drain":
                # The gateway shuts down, drains us, or answers our Drain: no
                # new tasks will come on this stream.
                log.info("draining: %s", message.drain.reason or "(no reason)")
                draining = bool(draining) or message.drain.stop
                self._draining.set()
            if draining is not None and not self._running and not self._unacked and not outbox.closed:
                # Everything is delivered: end our side; the gateway ends its.
                outbox.close()

    # -- tasks -----------------------------------------------------------------

    def _start(self, task: workers_pb2.Task) -> None:
        context = TaskContext(self, task)
        self._running[task.lease_id] = (asyncio.create_task(self._run_task(context)), context)

    def _cancel(self, cancel: workers_pb2.Cancel) -> None:
        running = self._running.get(cancel.lease_id)
        if running is None:
            return
        task, context = running
        log.info("cancelled: %s (%s)", cancel.ticket_id, cancel.message)
        context.cancel_reason = (cancel.reason, cancel.message)
        task.cancel()

    async def _run_task(self, context: TaskContext) -> None:
        """Runs the handler of one lease under a permit and records its one result."""
        task = context.task
        handler = self._handlers.get(task.queue)
        outcome: dict[str, Any]
        try:
            async with self._permits:
                if handler is None:
                    raise Permanent(f"this worker has no handler for queue {task.queue!r}", code=grpc.StatusCode.UNIMPLEMENTED)
                value = await handler(context)
            outcome = {"success": to_payload(value)}
        except asyncio.CancelledError:
            reason = context.cancel_reason[1] if context.cancel_reason else "the worker stopped"
            failure = workers_pb2.TaskFailure(code=grpc.StatusCode.CANCELLED.value[0], message=reason)
            outcome = {"failure": failure}
        except TaskError as error:
            failure = workers_pb2.TaskFailure(code=error.code.value[0], message=error.message, retryable=error.retryable)
            outcome = {"failure": failure}
        except Exception as error:  # a bug in the handler: another attempt may go better
            log.exception("task %s failed", task.ticket_id)
            failure = workers_pb2.TaskFailure(
                code=grpc.StatusCode.INTERNAL.value[0], message=f"{type(error).__name__}: {error}", retryable=True
            )
            outcome = {"failure": failure}
        message = workers_pb2.WorkerMessage(
            result=workers_pb2.TaskResult(ticket_id=task.ticket_id, lease_id=task.lease_id, **outcome)
        )
        if self._aborted:
            return
        self._running.pop(task.lease_id, None)
        self._unacked[task.lease_id] = message
        if self._outbox is not None:
            self._outbox.data_nowait(message)

    async def _send_data(self, message: workers_pb2.WorkerMessage) -> None:
        """Progress and output of a running task; dropped while disconnected."""
        if self._outbox is not None and not self._outbox.closed:
            await self._outbox.data(message)

    def _acknowledged(self, ack: workers_pb2.ResultAck) -> None:
        if ack.code == grpc.StatusCode.UNAVAILABLE.value[0] and ack.lease_id in self._unacked:
            # The gateway could not store it yet: keep it and send it again shortly.
            message = self._unacked[ack.lease_id]
            asyncio.get_running_loop().call_later(_RESEND_AFTER, self._resend, ack.lease_id, message)
            return
        self._unacked.pop(ack.lease_id, None)
        if ack.code not in (grpc.StatusCode.OK.value[0], grpc.StatusCode.ALREADY_EXISTS.value[0]):
            log.warning("result for %s not recorded: code %d: %s", ack.ticket_id, ack.code, ack.message)

    def _resend(self, lease_id: str, message: workers_pb2.WorkerMessage) -> None:
        if lease_id in self._unacked and self._outbox is not None and not self._outbox.closed:
            self._outbox.data_nowait(message)
