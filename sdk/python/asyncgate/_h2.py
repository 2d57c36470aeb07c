"""The SDK's own transport for its bulk streams: one gRPC streaming call on a dedicated HTTP/2 connection.

Why not grpcio for these: grpcio spends 40-50 µs of CPU on every message a
stream reads or writes (each is an operation through its completion queue,
its poller thread and the event loop), whatever the message's size. A
producer's `SubmitStream` costs two messages per ticket, so grpcio alone
held a producer near 100 µs per ticket, and a busy worker's Connect stream
paid the same per batch. Here HTTP/2 is python-hyper's `h2` (framing, HPACK,
flow control, the protocol's rules) driven by an asyncio Protocol that
batches: everything one socket read brought goes to `h2` in one
`receive_data` and every message in it is parsed in that pass; everything
the pass wrote (messages, WINDOW_UPDATEs, acks) goes out as one
`data_to_send()` in one socket write. gRPC's own message framing (a
compressed flag and a length before each message) is done here: it is the
gRPC protocol on top of HTTP/2.

Scope, on purpose small: one call per connection (stream 1), no
compression, no server push; plaintext or TLS (ALPN h2) with the
`Endpoint`'s settings and its `authorization` metadata. Flow control is
honoured both ways: our sends wait for the peer's windows (`h2` keeps
them); we grant the peer window as the caller takes messages, so a slow
reader pushes back. Our windows are large (4 MiB) and the peer may send
frames up to 1 MiB, so flow control rarely interrupts a busy stream. The
gateway's pings are answered (by `h2`), and a silent connection gets
keepalive pings of ours. The call ends with the trailers' grpc-status (an
`AsyncgateError` from the same `from_code` mapping as grpcio's errors), or
as `Unavailable` when the connection drops first. Unary calls and
everything else stay on grpcio.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import struct
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ._channel import Endpoint
from ._errors import AsyncgateError, Cancelled, Internal, Unavailable, from_code

__all__ = ["StreamCall", "open_stream", "DirectCall"]

#: The one stream of the connection (a client's first).
_STREAM = 1
#: The receive window we grant (stream and connection); given back as the caller takes messages.
_RECV_WINDOW = 4 * 1024 * 1024
#: Bytes taken by the reader that are handed to `h2` at once (it sends the
#: WINDOW_UPDATEs itself, once half a window is due): fewer calls per message.
_ACK_STEP = _RECV_WINDOW // 16
#: The largest DATA frame the gateway may send us: many messages in a frame
#: cost `h2` one frame's work.
_MAX_FRAME = 1024 * 1024
#: Unsent bytes above which `write` waits (backpressure on the writer).
_HIGH_WATER = 1024 * 1024
#: The largest message we accept (as grpcio's channel option in `_channel`).
_MAX_MESSAGE = 64 * 1024 * 1024
#: A connection silent this long gets a PING, and fails if that goes unanswered
#: for the timeout (grpcio's keepalive settings in `_channel`): a dead peer is
#: noticed even by a call that only waits.
_KEEPALIVE = 20.0
_KEEPALIVE_TIMEOUT = 10.0
_LENGTH = struct.Struct(">I")

# RST_STREAM error codes -> gRPC codes (gRPC's HTTP/2 spec).
_RST_CODES = {
    ErrorCodes.REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,
    ErrorCodes.CANCEL: grpc.StatusCode.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: grpc.StatusCode.PERMISSION_DENIED,
}
# HTTP statuses of a response with no grpc-status -> gRPC codes (gRPC's HTTP/2 spec).
_HTTP_CODES = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


class _Connection(h2.connection.H2Connection):
    """`h2`'s client connection, except that a graceful GOAWAY lets our call finish.

    A gateway shutting down sends GOAWAY (NO_ERROR, last stream >= ours),
    then finishes the streams it has: a worker's Drain, the last results,
    the trailers (RFC 9113 section 6.8). `h2` closes the whole connection on
    any GOAWAY and refuses every later frame (python-hyper/h2 issue 1181),
    which would turn every gateway restart into a broken call. So such a
    GOAWAY only reports `ConnectionTerminated`; any other goes to `h2`.
    Overrides `h2`'s handler of GOAWAY frames (its frame dispatch table is
    built from bound methods, so the override is what it calls); the unit
    test `test_a_graceful_goaway_lets_the_call_finish` pins it.
    """

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        if frame.error_code == ErrorCodes.NO_ERROR and frame.last_stream_id >= _STREAM:
            event = h2.events.ConnectionTerminated()
            event.error_code = ErrorCodes.NO_ERROR
            event.last_stream_id = frame.last_stream_id
            event.additional_data = frame.additional_data or None
            return [], [event]
        return super()._receive_goaway_frame(frame)


class StreamCall(asyncio.Protocol):
    """One bidirectional gRPC call, alone on its connection. Made by `open_stream`.

    `write(message)` queues a serialised message (the flush happens once per
    pass of the event loop); `await drain()` waits while too much is unsent.
    `read()` returns the next serialised message, None after a clean end
    (grpc-status OK), or raises the call's error. `done_writing()` half-closes;
    `cancel()` ends the call at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, headers: list[tuple[bytes, bytes]]) -> None:
        self._loop = loop
        self._headers = headers
        self._transport: asyncio.Transport | None = None
        self._h2 = _Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._data = bytearray()  # the stream's unparsed gRPC bytes
        self._received_headers = False
        #: Whole messages received and not yet read.
        self._messages: collections.deque[bytes] = collections.deque()
        self._reader: asyncio.Future[None] | None = None
        #: Framed gRPC bytes not yet given to `h2` (its windows closed, or not flushed yet).
        self._unsent: list[bytes] = []
        self._unsent_bytes = 0
        self._flush_scheduled = False
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._half_closed = False  # done_writing() asked
        self._end_sent = False
        #: Bytes the reader took (and padding), not yet acknowledged to `h2`.
        self._consumed = 0
        #: Bytes of the incomplete message at the head of `_data` already counted in `_consumed`.
        self._partial_acked = 0
        #: How the call ended: None while it runs, then the error (or None inside `_ended` for OK).
        self._ended: list[AsyncgateError | None] = []
        self._http_status = 0
        #: Loop time of the last bytes received, and of an unanswered keepalive PING.
        self._heard = loop.time()
        self._pinged: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Set when the connection is up and the request headers are sent.
        self.ready: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        conn = self._h2
        # Our settings go in the preface: no push, large windows, large frames.
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _RECV_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: _MAX_FRAME,
            },
        )
        # `h2` applies a setting of ours once the peer acknowledged it, and sets
        # its frame parser's limit once per `receive_data`: an ACK followed in
        # the same read by a frame above 16 KiB would be refused. Accepting our
        # own limit from the start is what the setting announces anyway.
        conn.max_inbound_frame_size = _MAX_FRAME
        conn.initiate_connection()
        conn.increment_flow_control_window(_RECV_WINDOW - 65535)  # the connection's window (no setting for it)
        conn.send_headers(_STREAM, self._headers)
        transport.write(conn.data_to_send())
        self._timer = self._loop.call_later(_KEEPALIVE, self._keepalive)
        if not self.ready.done():
            self.ready.set_result(None)

    def _keepalive(self) -> None:
        self._timer = None
        if self._ended or self._transport is None:
            return
        now = self._loop.time()
        if self._pinged is not None:
            if self._heard < self._pinged:
                if now - self._pinged >= _KEEPALIVE_TIMEOUT:
                    self._fail(Unavailable(f"the gateway did not answer a keepalive ping in {_KEEPALIVE_TIMEOUT:.0f}s"))
                    return
                self._timer = self._loop.call_later(self._pinged + _KEEPALIVE_TIMEOUT - now, self._keepalive)
                return
            self._pinged = None
        quiet = now - self._heard
        if quiet >= _KEEPALIVE:
            self._h2.ping(bytes(8))
            self._schedule_flush()
            self._pinged = now
            self._timer = self._loop.call_later(_KEEPALIVE_TIMEOUT, self._keepalive)
        else:
            self._timer = self._loop.call_later(_KEEPALIVE - quiet, self._keepalive)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._end(Unavailable(f"the connection to the gateway was lost: {exc or 'closed'}"))
        if not self.ready.done():
            self.ready.set_exception(Unavailable(f"could not connect: {exc or 'closed'}"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        """Everything one read brought, to `h2` at once; its events handled in one pass."""
        self._heard = self._loop.time()
        if self._ended:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self._fail(Internal(f"bad HTTP/2 data from the gateway: {error!r}"))
            return
        received = False
        DataReceived = h2.events.DataReceived
        for event in events:
            if type(event) is DataReceived:
                if event.stream_id == _STREAM:
                    self._data += event.data
                    received = True
                    padding = event.flow_controlled_length - len(event.data)
                    if padding:
                        self._consumed += padding  # granted back with the next acknowledgement
            else:
                self._on_event(event)
        if received:
            try:
                self._parse_messages()
            except ValueError as error:
                self._fail(Internal(f"bad gRPC data from the gateway: {error}"))
                return
            rest = len(self._data)
            if rest > self._partial_acked:
                # An incomplete message is granted back as it arrives: one larger
                # than our window could never arrive otherwise. Whole messages
                # are granted as the caller reads them (backpressure).
                self._consumed += rest - self._partial_acked
                self._partial_acked = rest
            if self._messages and self._reader is not None and not self._reader.done():
                self._reader.set_result(None)
        # Settings and ping acks, window changes: the flush of this pass takes them.
        self._schedule_flush()

    # -- events --------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            if event.stream_id == _STREAM:
                self._on_headers(event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.TrailersReceived):
            if event.stream_id == _STREAM:
                self._on_headers(event.headers, True)
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id == _STREAM:
                # After trailers this changes nothing (the first word counts).
                self._end(Internal("the gateway ended the call without trailers"))
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id == _STREAM:
                code = event.error_code
                status = _RST_CODES.get(code, grpc.StatusCode.INTERNAL)
                self._end(from_code(status.value[0], f"the gateway reset the stream (RST_STREAM with HTTP/2 error {int(code)})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            if event.last_stream_id is None or event.last_stream_id < _STREAM:
                self._end(Unavailable("the gateway is going away (the call was not started)"))
            elif event.error_code != ErrorCodes.NO_ERROR:
                self._end(Unavailable(f"the gateway closed the connection (GOAWAY with HTTP/2 error {int(event.error_code)})"))
            # Otherwise a graceful GOAWAY: the call may finish; the connection closes after it.
        # The rest (settings, window updates, ping acks, priority) needs nothing
        # here: `h2` has applied them, and the flush of this pass sends what they allow.

    def _on_headers(self, fields: list[tuple[bytes, bytes]], ends_stream: bool) -> None:
        headers = dict(fields)
        if not self._received_headers:
            self._received_headers = True
            try:
                self._http_status = int(headers.get(b":status", b"0"))
            except ValueError:
                self._http_status = 0
        if not ends_stream:
            return
        status = headers.get(b"grpc-status")
        if status is None:
            http = self._http_status
            code = _HTTP_CODES.get(http, grpc.StatusCode.UNKNOWN) if http != 200 else grpc.StatusCode.INTERNAL
            self._end(from_code(code.value[0], f"the call ended without a grpc-status (HTTP {http})"))
            return
        message = unquote(headers.get(b"grpc-message", b"").decode("utf-8", "replace"))
        try:
            code_number = int(status)
        except ValueError:
            self._end(Internal(f"a malformed grpc-status {status!r}"))
            return
        self._end(None if code_number == 0 else from_code(code_number, message))

    def _parse_messages(self) -> None:
        """Cuts the gRPC messages (a flag byte, a 4-byte length, the bytes) out of the stream's data."""
        data, pos, size = self._data, 0, len(self._data)
        messages = self._messages
        while size - pos >= 5:
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if data[pos]:
                raise ValueError("a compressed message (none was asked for)")
            if length > _MAX_MESSAGE:
                raise ValueError(f"a message of {length} bytes, above the {_MAX_MESSAGE} limit")
            if size - pos < 5 + length:
                break
            messages.append(bytes(data[pos + 5 : pos + 5 + length]))
            pos += 5 + length
            if self._partial_acked:
                # This message's first bytes were granted as they came; its read grants the rest.
                self._consumed -= self._partial_acked
                self._partial_acked = 0
        if pos:
            del data[:pos]

    # -- ending ----------------------------------------------------------------------

    def _end(self, error: AsyncgateError | None) -> None:
        """Records how the call ended (the first word counts) and wakes the reader and writer."""
        if self._ended:
            return
        self._ended.append(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        self._wake_writer()
        if self._transport is not None:
            # The call is over (the gateway's status ends it, whatever we still
            # meant to send): this connection has nothing more to carry.
            self._transport.close()

    def _fail(self, error: AsyncgateError) -> None:
        self._end(error)
        if self._transport is not None:
            self._transport.abort()

    def cancel(self) -> None:
        """Ends the call at once (RST_STREAM CANCEL, then the connection)."""
        if not self._ended:
            if self._transport is not None:
                try:
                    self._h2.reset_stream(_STREAM, ErrorCodes.CANCEL)
                    self._transport.write(self._h2.data_to_send())
                except h2.exceptions.ProtocolError:
                    pass  # the stream is already closed for h2: nothing to reset
            self._end(Cancelled("the call was cancelled"))
        if self._transport is not None:
            self._transport.close()

    def done(self) -> bool:
        return bool(self._ended)

    # -- writing -----------------------------------------------------------------------

    def write(self, message: bytes) -> None:
        """Queues one serialised message; it goes out with the others of this pass of the loop."""
        if self._ended:
            raise self._ended[0] or Unavailable("the call has ended")
        if self._half_closed:
            raise RuntimeError("write after done_writing")
        self._unsent.append(b"\x00" + _LENGTH.pack(len(message)) + message)
        self._unsent_bytes += len(message) + 5
        self._schedule_flush()

    async def drain(self) -> None:
        """Waits while more than the high-water mark is unsent (or the socket is full)."""
        while (self._unsent_bytes > _HIGH_WATER or self._paused) and not self._ended:
            self._writable = self._loop.create_future()
            await self._writable
        if self._ended and self._ended[0] is not None:
            raise self._ended[0]

    def done_writing(self) -> None:
        """Half-closes: no more messages from us (once the queued ones are sent)."""
        self._half_closed = True
        self._schedule_flush()

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Gives `h2` the messages its windows allow, in frames as large as allowed, then one socket write."""
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or self._ended:
            return
        conn = self._h2
        try:
            if self._consumed >= _ACK_STEP:
                consumed, self._consumed = self._consumed, 0
                conn.acknowledge_received_data(consumed, _STREAM)
            if self._unsent and not self._end_sent:
                pending = b"".join(self._unsent) if len(self._unsent) > 1 else self._unsent[0]
                allowed = min(conn.local_flow_control_window(_STREAM), len(pending))
                frame = conn.max_outbound_frame_size
                view = memoryview(pending)
                sent = 0
                while sent < allowed:
                    step = min(frame, allowed - sent)
                    last = self._half_closed and sent + step == len(pending)
                    conn.send_data(_STREAM, view[sent : sent + step], end_stream=last)
                    self._end_sent = last
                    sent += step
                self._unsent = [pending[sent:]] if sent < len(pending) else []
                self._unsent_bytes = len(pending) - sent
            if self._half_closed and not self._unsent and not self._end_sent:
                conn.end_stream(_STREAM)
                self._end_sent = True
        except h2.exceptions.ProtocolError as error:
            self._fail(Internal(f"HTTP/2 refused our data: {error!r}"))
            return
        out = conn.data_to_send()
        if out:
            transport.write(out)
        if self._unsent_bytes <= _HIGH_WATER:
            self._wake_writer()

    # -- reading -----------------------------------------------------------------------

    def _taken(self, size: int) -> None:
        """The reader took `size` bytes: once a step's worth, `h2` gets them (in the next flush)."""
        self._consumed += size
        if self._consumed >= _ACK_STEP:
            self._schedule_flush()

    async def read(self) -> bytes | None:
        """The next message; None once the call ended with OK; raises its error otherwise."""
        while not self._messages:
            if self._ended:
                if self._ended[0] is not None:
                    raise self._ended[0]
                return None
            self._reader = self._loop.create_future()
            await self._reader
        message = self._messages.popleft()
        self._taken(len(message) + 5)
        return message

    def read_ready(self) -> list[bytes]:
        """Every message already received (maybe none), without waiting."""
        if not self._messages:
            return []
        messages = list(self._messages)
        self._messages.clear()
        self._taken(sum(map(len, messages)) + 5 * len(messages))
        return messages


def _tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    tls = endpoint.tls
    assert tls is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.root_certificates:
        context.load_verify_locations(cadata=tls.root_certificates.decode())
    else:
        context.load_default_certs()
    if tls.private_key and tls.certificate_chain:
        # The ssl module loads a client certificate from files only: write them
        # to a private temporary directory, load, and delete at once.
        with tempfile.TemporaryDirectory(prefix="asyncgate-tls-") as directory:
            cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
            for path, data in ((cert, tls.certificate_chain), (key, tls.private_key)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                    file.write(data)
            context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {target!r}")
    return host.strip("[]"), int(port)


async def open_stream(endpoint: Endpoint, path: str, *, timeout: float = 20.0) -> StreamCall:
    """Connects and starts the call `path` (e.g. "/asyncgate.v1.Gateway/SubmitStream")."""
    loop = asyncio.get_running_loop()
    host, port = _host_port(endpoint.target)
    secure = endpoint.tls is not None
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"https" if secure else b"http"),
        (b":path", path.encode()),
        (b":authority", endpoint.target.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"user-agent", b"asyncgate-python"),
    ]
    fields += [(name.encode(), value.encode()) for name, value in endpoint.metadata]
    if not secure:
        context, server_hostname = None, None
    else:
        assert endpoint.tls is not None
        context, server_hostname = _tls_context(endpoint), endpoint.tls.server_name or host
    try:
        _, call = await asyncio.wait_for(
            loop.create_connection(
                lambda: StreamCall(loop, fields), host, port, ssl=context, server_hostname=server_hostname
            ),
            timeout,
        )
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as error:
        raise Unavailable(f"could not connect to {endpoint.target}: {error!r}") from error
    if secure:
        transport = call._transport
        protocol = transport.get_extra_info("ssl_object").selected_alpn_protocol() if transport else None
        if protocol != "h2":
            call.cancel()
            raise Unavailable(f"{endpoint.target} does not speak HTTP/2 over TLS (ALPN {protocol!r})")
    await call.ready
    return call


class DirectCall:
    """A `grpc.aio` stream call's face (`write`, `read`, `done_writing`, `cancel`) on a `StreamCall`.

    It starts connecting when made and every method waits for that, so code
    written for a grpcio call (the worker's session, `Results`) uses it as
    is. Messages in are encoded by `serialize` (None: already bytes), out
    are decoded by `deserialize`; the end of the call reads as
    `grpc.aio.EOF`. Failures are `AsyncgateError`s (never `AioRpcError`).
    """

    def __init__(
        self, endpoint: Endpoint, path: str, deserialize: Callable[[bytes], Any], serialize: Callable[[Any], bytes] | None = None
    ) -> None:
        self._deserialize = deserialize
        self._serialize = serialize
        self._connecting: asyncio.Task[StreamCall] = asyncio.ensure_future(open_stream(endpoint, path))
        self._connecting.add_done_callback(self._connected)
        #: The call once connected (saves a shielded await per message).
        self._stream: StreamCall | None = None
        self._cancelled = False

    def _connected(self, task: asyncio.Task[StreamCall]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if self._cancelled:
            task.result().cancel()
        else:
            self._stream = task.result()

    async def _call(self) -> StreamCall:
        if self._cancelled:
            raise Cancelled("the call was cancelled")
        if self._stream is not None:
            return self._stream
        return await asyncio.shield(self._connecting)

    async def write(self, message: Any) -> None:
        call = self._stream or await self._call()
        call.write(message if self._serialize is None else self._serialize(message))
        await call.drain()

    async def read(self) -> Any:
        call = self._stream or await self._call()
        raw = await call.read()
        return grpc.aio.EOF if raw is None else self._deserialize(raw)

    def read_ready(self) -> list[Any]:
        """The messages already received, decoded, without waiting (maybe none)."""
        if self._stream is None:
            return []
        return [self._deserialize(raw) for raw in self._stream.read_ready()]

    async def done_writing(self) -> None:
        (await self._call()).done_writing()

    def cancel(self) -> bool:
        self._cancelled = True
        if self._connecting.done():
            if not self._connecting.cancelled() and self._connecting.exception() is None:
                self._connecting.result().cancel()
        else:
            self._connecting.cancel()
        return True

    def done(self) -> bool:
        if not self._connecting.done() or self._connecting.cancelled() or self._connecting.exception() is not None:
            return self._cancelled or self._connecting.done()
        return self._connecting.result().done()
