"""`Client`: the `asyncgate.v1.Gateway` calls, asyncio-first on `grpc.aio`.

One `grpc.aio` channel per client, shared by every call (HTTP/2 multiplexes
them). Each method is one RPC except `submit_many` (one `SubmitStream`,
requests encoded up front so that the stream's loop only writes bytes; on
the SDK's own HTTP/2 connection, `_h2.py`, unless `direct_streams=False`), the
event streams (`watch`, `execute`), which reopen themselves after a broken
connection from the last seq they delivered, like the Rust SDK's
`EventStream`, and `results` (`_results.py`: many tickets on one
`WatchTickets` stream, resumed the same way per ticket). `admin` is the
operator's service (`_admin.py`). Every gRPC failure leaves this module as
an `AsyncgateError` subclass.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import weakref
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ._admin import Admin
from ._aio import within
from ._backoff import Backoff
from ._channel import TLS, endpoint
from ._cursor import Cursor, Verdict
from ._errors import AsyncgateError, ProtocolError, Unavailable, from_code, from_rpc_error, is_transient
from ._h2 import open_stream
from ._proto.v1 import gateway_pb2, gateway_pb2_grpc
from ._results import Results
from ._schedules import Schedules
from ._types import Event, PayloadLike, Ticket, TicketState, to_payload

__all__ = ["Client", "Submit", "Page", "ResumeOptions", "EventStream"]

#: Seconds, or a timedelta.
Seconds = Union[float, int, _dt.timedelta]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _identity(data: bytes) -> bytes:
    return data


_SUBMIT_STREAM = "/asyncgate.v1.Gateway/SubmitStream"
_WATCH_TICKETS = "/asyncgate.v1.Gateway/WatchTickets"


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)


def _duration(value: Seconds | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(_dt.timedelta(seconds=_seconds(value)))
    return duration


@dataclass
class Submit:
    """One request to submit (the arguments of `Client.submit`, as a value for `submit_many`)."""

    queue: str
    payload: PayloadLike = None
    priority: int = 0
    idempotency_key: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: The whole budget from submit to result (None: no deadline).
    timeout: Seconds | None = None
    #: One attempt's run time (None: no limit beyond the lease heartbeats).
    attempt_timeout: Seconds | None = None
    #: 0: the gateway's default.
    max_attempts: int = 0
    #: Run no sooner than this long after the submit (the ticket waits PENDING, scheduled).
    delay: Seconds | None = None
    #: Or no sooner than this time (timezone-aware; one of `delay` and `not_before`).
    not_before: _dt.datetime | None = None
    #: Deliver the terminal ticket here when it ends: `https://HOST/PATH` (a
    #: signed POST) or `grpc(s)://HOST:PORT`; the gateway must allow it.
    callback: str = ""

    def encode(self) -> bytes:
        """The serialised `SubmitRequest` (what `submit_many` writes).

        The common producer's request (a queue and a binary body, nothing
        else) is framed by hand, one join instead of building two messages
        and serialising them; the result is the same bytes protobuf writes.
        """
        payload = self.payload
        if (
            type(payload) is bytes
            and not (self.priority or self.idempotency_key or self.metadata or self.max_attempts)
            and self.timeout is None
            and self.attempt_timeout is None
            and self.delay is None
            and self.not_before is None
            and not self.callback
        ):
            queue = self.queue.encode()
            inner = b"\x12" + _varint(len(payload))  # Payload.binary (2)
            return b"".join(
                (b"\x0a", _varint(len(queue)), queue, b"\x12", _varint(len(inner) + len(payload)), inner, payload)
            )
        return self.to_proto().SerializeToString()

    def to_proto(self) -> gateway_pb2.SubmitRequest:
        """The `SubmitRequest` message."""
        return gateway_pb2.SubmitRequest(
            queue=self.queue,
            payload=to_payload(self.payload),
            priority=self.priority,
            idempotency_key=self.idempotency_key,
            metadata=dict(self.metadata),
            timeout=_duration(self.timeout),
            attempt_timeout=_duration(self.attempt_timeout),
            max_attempts=self.max_attempts,
            delay=_duration(self.delay),
            not_before=_timestamp(self.not_before),
            callback=self.callback,
        )


def _timestamp(value: _dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(_dt.timezone.utc) if value.tzinfo else value)
    return stamp


@dataclass(frozen=True)
class Page:
    """One page of `Client.list`."""

    tickets: list[Ticket]
    #: Pass as `page_token` for the next page; "" when there is none.
    next_page_token: str


@dataclass(frozen=True)
class ResumeOptions:
    """How event streams survive broken connections."""

    #: Reopen attempts in a row (with no event in between) before giving up; 0 disables resuming.
    max_attempts: int = 10
    #: The first backoff ceiling and the largest, in seconds (equal jitter).
    min_backoff: float = 0.1
    max_backoff: float = 5.0
    #: A stream silent (not even a KEEPALIVE) for this long is taken for dead and reopened;
    #: keep it above the gateway's `--watch-keepalive` (15 s by default). None: never.
    idle_timeout: float | None = 90.0


# How long a finished stream may take to deliver its trailers.
_TRAILER_WAIT = 1.0


class Client:
    """A connection to a gateway's `Gateway` service.

    `url` is `http://host:port`, `https://host:port` or `host:port`;
    `api_key` is sent as `authorization: Bearer KEY`; `tls` is a `TLS` (a
    private CA, mutual TLS), the PEM bytes of a CA to trust, or True for the
    system roots. `call_timeout`
    bounds each unary call (seconds). Use it as an async context manager, or
    call `close()`.

    `direct_streams` (the default): the bulk streams, `submit_many` and
    `results`, each run on an HTTP/2 connection of their own driven by
    python-hyper's `h2` (`_h2.py`), which costs a small fraction of grpcio's
    CPU per message; False keeps every call on grpcio.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        tls: TLS | bytes | bool | None = None,
        *,
        call_timeout: float = 30.0,
        resume: ResumeOptions = ResumeOptions(),
        direct_streams: bool = True,
    ) -> None:
        self._endpoint = endpoint(url, api_key, tls)
        #: `submit_many` and `results` on the SDK's own HTTP/2 connections (`_h2.py`), not grpcio.
        self._direct = direct_streams
        self._channel = self._endpoint.channel()
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = self._endpoint.metadata
        self._call_timeout = call_timeout
        self._resume = resume
        # SubmitStream with requests we encode ourselves (`Submit.encode`).
        self._submit_stream_bytes = self._channel.stream_stream(
            "/asyncgate.v1.Gateway/SubmitStream",
            request_serializer=_identity,
            response_deserializer=gateway_pb2.SubmitResult.FromString,
        )
        self._admin: Admin | None = None
        self._schedules: Schedules | None = None
        #: Open `results()` streams (each on its own connection), ended by `close`.
        self._results: weakref.WeakSet[Results] = weakref.WeakSet()

    @property
    def schedules(self) -> Schedules:
        """Schedules (`Schedules` service) on this client's channel and key."""
        if self._schedules is None:
            self._schedules = Schedules(self)
        return self._schedules

    @property
    def admin(self) -> Admin:
        """The operator's calls (`Admin` service) on this client's channel and key."""
        if self._admin is None:
            self._admin = Admin(self)
        return self._admin

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel and the open `results()` streams; calls in progress are cancelled."""
        for results in list(self._results):
            await results.aclose()
        await self._channel.close()

    async def submit(
        self,
        queue: str,
        payload: PayloadLike = None,
        *,
        priority: int = 0,
        idempotency_key: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout: Seconds | None = None,
        attempt_timeout: Seconds | None = None,
        max_attempts: int = 0,
        delay: Seconds | None = None,
        not_before: _dt.datetime | None = None,
        callback: str = "",
    ) -> Ticket:
        """Stores a request and returns its PENDING ticket at once.

        `payload`: bytes travel as binary, anything else as JSON (see
        `json_payload`/`bytes_payload` for a content type). A repeated
        `idempotency_key` returns the original ticket. With `delay` or
        `not_before` it waits (PENDING, scheduled) until then. With
        `callback` the gateway delivers the terminal ticket there when it
        ends (a signed POST, or `Callbacks.TicketFinished`); a destination
        the gateway does not allow raises `FailedPrecondition`.
        """
        request = Submit(
            queue,
            payload,
            priority,
            idempotency_key,
            metadata or {},
            timeout,
            attempt_timeout,
            max_attempts,
            delay,
            not_before,
            callback,
        )
        return await self._submit(request.to_proto())

    async def _submit(self, request: gateway_pb2.SubmitRequest) -> Ticket:
        try:
            ticket = await self._stub.Submit(request, metadata=self._metadata, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return Ticket(ticket)

    async def submit_batch(self, requests: Sequence[Submit]) -> list[Ticket | AsyncgateError]:
        """Submits up to 1,000 requests in one `SubmitBatch` call, stored in one commit.

        Returns one entry per request, in order: its `Ticket`, or the
        `AsyncgateError` it was refused with (each request is refused on its
        own, naming its field). An empty or oversized batch raises
        `InvalidArgument`. For long streams of submits use `submit_many`.
        """
        request = gateway_pb2.SubmitBatchRequest(requests=[r.to_proto() for r in requests])
        try:
            response = await self._stub.SubmitBatch(request, metadata=self._metadata, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return [
            from_code(result.error.code, result.error.message)
            if result.HasField("error")
            else Ticket(result.ticket)
            for result in response.results
        ]

    async def submit_many(
        self, requests: Iterable[Submit], *, in_flight: int = 256, return_exceptions: bool = False
    ) -> list[Any]:
        """Submits every request on one `SubmitStream`, `in_flight` unanswered at a time.

        Returns the tickets in the order of `requests`: each answered once the
        gateway stored it. With `return_exceptions`, a refused request's
        `AsyncgateError` takes its place in the list; otherwise the first
        failure is raised once every request has been answered. If the stream
        breaks, the unanswered requests get its error (they may or may not be
        stored: use idempotency keys to repeat the batch safely).
        """
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        encoded = [request.encode() for request in requests]
        results: list[Any] = [None] * len(encoded)
        if encoded:
            if self._direct:
                await self._submit_direct(encoded, results, in_flight)
            else:
                await self._submit_stream(encoded, results, in_flight)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    async def _submit_direct(self, encoded: list[bytes], results: list[Any], in_flight: int) -> None:
        """`_submit_stream` on the SDK's own connection: one coroutine, no task.

        Each pass writes what the window allows (flushed as one socket write
        at the end of the pass) and handles every answer that arrived.
        """
        total = len(encoded)
        sent = answered = 0
        broken: AsyncgateError | None = None
        decode = gateway_pb2.SubmitResult.FromString
        try:
            call = await open_stream(self._endpoint, _SUBMIT_STREAM, timeout=self._call_timeout)
        except AsyncgateError as error:
            broken = error
        else:
            try:
                while answered < total:
                    limit = min(total, answered + in_flight)
                    while sent < limit:
                        call.write(encoded[sent])
                        sent += 1
                    if sent == total:
                        call.done_writing()
                    await call.drain()
                    first = await call.read()
                    if first is None:
                        break
                    for raw in (first, *call.read_ready()):
                        answer = decode(raw)
                        if answer.HasField("error"):
                            results[answer.index] = from_code(answer.error.code, answer.error.message)
                        else:
                            results[answer.index] = Ticket(answer.ticket)
                        answered += 1
            except AsyncgateError as error:
                broken = error
            finally:
                if not call.done():
                    call.cancel()
        if answered < total:
            error = broken or Unavailable("the submit stream ended before every request was answered")
            for index, result in enumerate(results):
                if result is None:
                    results[index] = error

    async def _submit_stream(self, encoded: list[bytes], results: list[Any], in_flight: int) -> None:
        """Fills `results` with the answers of one SubmitStream carrying `encoded` requests."""
        call = self._submit_stream_bytes(metadata=self._metadata)
        total = len(encoded)
        # The window: the sender may run `in_flight` ahead of the answers.
        answered = 0
        room: asyncio.Future[None] | None = None

        async def send() -> None:
            nonlocal room
            loop = asyncio.get_running_loop()
            for sent, request in enumerate(encoded):
                while sent - answered >= in_flight:
                    room = loop.create_future()
                    await room
                await call.write(request)
            await call.done_writing()

        sender = asyncio.create_task(send())
        try:
            while answered < total:
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    break
                answered += 1
                if room is not None and not room.done():
                    room.set_result(None)
                if answer.HasField("error"):
                    results[answer.index] = from_code(answer.error.code, answer.error.message)
                else:
                    results[answer.index] = Ticket(answer.ticket)
            broken: AsyncgateError = Unavailable("the submit stream ended before every request was answered")
        except grpc.aio.AioRpcError as error:
            broken = from_rpc_error(error)
        finally:
            sender.cancel()
        for index, result in enumerate(results):
            if result is None:
                results[index] = broken

    def execute(
        self,
        queue: str,
        payload: PayloadLike = None,
        *,
        priority: int = 0,
        idempotency_key: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout: Seconds | None = None,
        attempt_timeout: Seconds | None = None,
        max_attempts: int = 0,
    ) -> EventStream:
        """Submit and follow in one call.

        `async for event in client.execute(...)` yields the events (the first
        is the new ticket's snapshot, the last its terminal event);
        `await client.execute(...)` returns the terminal `Ticket`. A break
        before the first event is repaired only with an `idempotency_key`
        (repeating the call is then safe); after it, the stream resumes as a
        watch.
        """
        request = Submit(
            queue, payload, priority, idempotency_key, metadata or {}, timeout, attempt_timeout, max_attempts
        )
        return EventStream(self, request.to_proto(), None)

    async def get(self, id: str, wait: Seconds | None = None) -> Ticket:
        """The ticket's current state; with `wait`, a long-poll until it is terminal or `wait` elapses."""
        request = gateway_pb2.GetTicketRequest(id=id, wait=_duration(wait))
        deadline = self._call_timeout + (_seconds(wait) if wait is not None else 0.0)
        try:
            ticket = await self._stub.GetTicket(request, metadata=self._metadata, timeout=deadline)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return Ticket(ticket)

    def results(self, ids: Iterable[str] = (), *, terminal_only: bool = True) -> Results:
        """Follows many tickets on one stream (`Gateway.WatchTickets`); see `Results`.

        `ids` are followed at once; `Results.add`/`remove` change the set
        while the stream runs. With `terminal_only` (the default, for
        producers that want results) each ticket yields only its end; with
        False, every event (a snapshot, progress, output, the end). The
        stream resumes after a broken connection from each ticket's last
        delivered seq: no event is missed or repeated.
        """
        results = Results(self, terminal_only)
        self._results.add(results)
        results.add_many(ids)
        return results

    def watch(self, id: str, after_seq: int | None = None) -> EventStream:
        """The ticket's events: a snapshot, then one per change, ending after the terminal one.

        With `after_seq` (the highest seq you processed), the stored output
        chunks after it are replayed after the snapshot. The stream resumes by
        itself after a broken connection, with no gap and no duplicate.
        """
        return EventStream(self, id, after_seq)

    async def who_am_i(self) -> gateway_pb2.WhoAmIResponse:
        """What this client's key is and may do: `key_name`, `role`, `tenant`,
        `sees_payloads`, and `methods` (every RPC it may call, as full paths)."""
        try:
            return await self._stub.WhoAmI(
                gateway_pb2.WhoAmIRequest(), metadata=self._metadata, timeout=self._call_timeout
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    async def cancel(self, id: str, reason: str = "") -> Ticket:
        """Cancels the ticket: at once when pending; a running one's worker is told to stop."""
        request = gateway_pb2.CancelTicketRequest(id=id, reason=reason)
        try:
            ticket = await self._stub.CancelTicket(request, metadata=self._metadata, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return Ticket(ticket)

    async def list(
        self,
        queue: str = "",
        states: Sequence[TicketState] = (),
        page_size: int = 0,
        page_token: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
        newest_first: bool = False,
    ) -> Page:
        """One page of tickets in creation order, filtered by queue, states and metadata entries."""
        request = gateway_pb2.ListTicketsRequest(
            queue=queue,
            states=[int(state) for state in states],
            page_size=page_size,
            page_token=page_token,
            metadata=dict(metadata or {}),
            newest_first=newest_first,
        )
        try:
            response = await self._stub.ListTickets(request, metadata=self._metadata, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return Page([Ticket(ticket) for ticket in response.tickets], response.next_page_token)

    async def list_all(
        self,
        queue: str = "",
        states: Sequence[TicketState] = (),
        *,
        metadata: Mapping[str, str] | None = None,
        newest_first: bool = False,
        page_size: int = 0,
    ) -> AsyncIterator[Ticket]:
        """Every matching ticket, following the page tokens."""
        token = ""
        while True:
            page = await self.list(
                queue, states, page_size, token, metadata=metadata, newest_first=newest_first
            )
            for ticket in page.tickets:
                yield ticket
            if not page.next_page_token:
                return
            token = page.next_page_token


class EventStream:
    """The events of one ticket, resumed across broken connections.

    Iterate it (`async for event in stream`) for SNAPSHOT, STATE, PROGRESS and
    OUTPUT events (KEEPALIVEs are consumed); it ends once the ticket is
    terminal. Or await it for the terminal `Ticket`. To stop early, use it as
    `async with client.watch(id) as events:` or call `aclose()`, which ends
    the call at once. An error is final: the
    gateway refused (e.g. `NotFound`), or `ResumeOptions.max_attempts`
    reopens in a row failed.
    """

    def __init__(self, client: Client, target: str | gateway_pb2.SubmitRequest, after_seq: int | None) -> None:
        self._client = client
        #: A ticket id (WatchTicket), or the request of an Execute whose ticket is not known yet.
        self._target = target
        self._cursor = Cursor(seq=after_seq)
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._backoff = Backoff(client._resume.min_backoff, client._resume.max_backoff)
        #: Reopen attempts since an event last arrived.
        self._failures = 0
        #: Why the last stream or reopen failed: raised if we give up.
        self._last_error: AsyncgateError | None = None
        #: The terminal event was delivered, or an error raised.
        self._done = False
        #: The latest ticket seen (for `result`).
        self._last: Ticket | None = None
        #: The first call was made (every later open is a resume).
        self._started = False

    def __aiter__(self) -> EventStream:
        return self

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __await__(self) -> Generator[Any, None, Ticket]:
        return self.result().__await__()

    async def result(self) -> Ticket:
        """Reads to the end; the ticket as its last event left it (terminal)."""
        async for _ in self:
            pass
        if self._last is None or not self._last.done:
            raise ProtocolError("the event stream ended before the ticket finished")
        return self._last

    @property
    def after_seq(self) -> int | None:
        """The highest seq delivered so far (the `after_seq` a new watch would resume from)."""
        return self._cursor.seq

    async def aclose(self) -> None:
        """Stops following (cancels the call in progress)."""
        self._done = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _open(self) -> grpc.aio.UnaryStreamCall:
        stub, metadata = self._client._stub, self._client._metadata
        if isinstance(self._target, str):
            after_seq = self._cursor.seq
            self._cursor.opened(after_seq)
            request = gateway_pb2.WatchTicketRequest(id=self._target, after_seq=after_seq)
            return stub.WatchTicket(request, metadata=metadata)
        self._cursor.opened(None)
        return stub.Execute(self._target, metadata=metadata)

    async def __anext__(self) -> Event:
        options = self._client._resume
        while True:
            if self._done:
                raise StopAsyncIteration
            if self._call is None:
                await self._reopen()
            call = self._call
            assert call is not None
            try:
                if options.idle_timeout is None:
                    message = await call.read()
                else:
                    message = await within(call.read(), options.idle_timeout)
            except asyncio.TimeoutError:
                self._broken(Unavailable(f"no event or keepalive for {options.idle_timeout}s"))
                continue
            except grpc.aio.AioRpcError as error:
                typed = from_rpc_error(error)
                if is_transient(typed):
                    self._broken(typed)
                    continue
                self._done = True
                self._call = None
                raise typed from error
            if message is grpc.aio.EOF:
                if self._cursor.terminal_seen:
                    self._done = True
                    raise StopAsyncIteration
                # A gateway that shuts down ends its watches cleanly; the ticket
                # is not over, so follow it again.
                self._broken(Unavailable("the event stream ended before the terminal event"))
                continue
            self._failures = 0
            self._backoff.reset()
            verdict = self._cursor.accept(message)
            if verdict is Verdict.KEEPALIVE:
                if self._cursor.terminal_seen:
                    # Keepalives flow only on an idle stream: the replay is over.
                    await self._finish()
                    raise StopAsyncIteration
                continue
            if verdict is Verdict.DUPLICATE:
                continue
            if not isinstance(self._target, str):
                if not message.HasField("ticket"):
                    self._done = True
                    raise ProtocolError("the first Execute event carries no ticket")
                self._target = message.ticket.id
            event = Event(message)
            if message.HasField("ticket"):
                self._last = Ticket(message.ticket)
            if verdict is Verdict.DELIVER_LAST:
                await self._finish()
            return event

    async def _finish(self) -> None:
        """Reads the stream to its end so that it closes with its trailers.

        Cancelling instead would reset the stream, and many resets on one
        connection make the server close the connection under every other call.
        """
        self._done = True
        call, self._call = self._call, None
        if call is None:
            return

        async def rest() -> None:
            while await call.read() is not grpc.aio.EOF:
                pass

        try:
            await asyncio.wait_for(rest(), _TRAILER_WAIT)
        except (asyncio.TimeoutError, grpc.aio.AioRpcError):
            call.cancel()

    def _broken(self, error: AsyncgateError) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self._last_error = error

    async def _reopen(self) -> None:
        """Opens the first stream, or reopens after a break with backoff; raises when giving up."""
        if not self._started:
            self._started = True
            self._call = self._open()
            return
        options = self._client._resume
        while True:
            execute_unkeyed = not isinstance(self._target, str) and not self._target.idempotency_key
            if self._failures >= options.max_attempts or execute_unkeyed:
                self._done = True
                raise self._last_error or Unavailable("event stream broken")
            self._failures += 1
            await asyncio.sleep(self._backoff.next_delay())
            self._call = self._open()
            return
