"""The SDK's own transport for its bulk streams: one gRPC streaming call on a dedicated HTTP/2 connection.

Why not grpcio for these: grpcio spends 40-50 µs of CPU on every message a
stream reads or writes (each is an operation through its completion queue,
its poller thread and the event loop), whatever the message's size. A
producer's `SubmitStream` costs two messages per ticket, so grpcio alone
held a producer near 100 µs per ticket, and a busy worker's Connect stream
paid the same per batch. Here a message costs what Python needs to frame
or parse it: everything a pass of the event loop wrote goes out in one
socket write, and every message that one socket read brought is parsed in
that pass (SubmitStream: about 5 µs per ticket instead of about 100, see
BENCH-NOTES.md).

Scope, on purpose small: one call per connection (stream 1), no
compression, no server push; plaintext or TLS (ALPN h2) with the
`Endpoint`'s settings and its `authorization` metadata. Flow control is
honoured both ways: our sends wait for the peer's windows; we grant the
peer window as the caller takes messages, so a slow reader pushes back. The
gateway's pings are answered. The call ends with the trailers' grpc-status
(an `AsyncgateError` from the same `from_code` mapping as grpcio's errors),
or as `Unavailable` when the connection drops first. Unary calls and
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

from . import _hpack
from ._channel import Endpoint
from ._errors import AsyncgateError, Cancelled, Internal, Unavailable, from_code

__all__ = ["StreamCall", "open_stream", "DirectCall"]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113 section 6).
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
# Flags.
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
# Settings.
_SETTINGS_HEADER_TABLE_SIZE, _SETTINGS_ENABLE_PUSH, _SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE = 1, 2, 4, 5
#: The one stream of the connection.
_STREAM = 1
#: The receive window we grant (stream and connection); topped up as the caller takes messages.
_RECV_WINDOW = 4 * 1024 * 1024
#: Unsent bytes above which `write` waits (backpressure on the writer).
_HIGH_WATER = 1024 * 1024
#: The largest message we accept (as grpcio's channel option in `_channel`).
_MAX_MESSAGE = 64 * 1024 * 1024
#: A connection silent this long gets a PING, and fails if that goes unanswered
#: for the timeout (grpcio's keepalive settings in `_channel`): a dead peer is
#: noticed even by a call that only waits.
_KEEPALIVE = 20.0
_KEEPALIVE_TIMEOUT = 10.0
_HEADER = struct.Struct(">I")

# RST_STREAM error codes -> gRPC codes (gRPC's HTTP/2 spec).
_RST_CODES = {
    0x7: grpc.StatusCode.UNAVAILABLE,  # REFUSED_STREAM
    0x8: grpc.StatusCode.CANCELLED,  # CANCEL
    0xB: grpc.StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: grpc.StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
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


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload))[1:] + bytes((kind, flags)) + _HEADER.pack(stream) + payload


def _window_update(stream: int, increment: int) -> bytes:
    return _frame(_WINDOW_UPDATE, 0, stream, _HEADER.pack(increment))


class StreamCall(asyncio.Protocol):
    """One bidirectional gRPC call, alone on its connection. Made by `open_stream`.

    `write(message)` queues a serialised message (the flush happens once per
    pass of the event loop); `await drain()` waits while too much is unsent.
    `read()` returns the next serialised message, None after a clean end
    (grpc-status OK), or raises the call's error. `done_writing()` half-closes;
    `cancel()` ends the call at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, headers: bytes) -> None:
        self._loop = loop
        self._headers = headers
        self._transport: asyncio.Transport | None = None
        self._decoder = _hpack.Decoder()
        self._inbox = bytearray()  # unparsed frames
        self._data = bytearray()  # the stream's unparsed gRPC bytes
        self._block = bytearray()  # a header block awaiting CONTINUATION
        self._block_ends_stream = False
        self._received_headers = False
        #: Whole messages received and not yet read.
        self._messages: collections.deque[bytes] = collections.deque()
        self._reader: asyncio.Future[None] | None = None
        #: Framed gRPC bytes not yet sent (windows closed or not flushed yet).
        self._unsent: list[bytes] = []
        self._unsent_bytes = 0
        self._flush_scheduled = False
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._half_closed = False  # done_writing() asked
        self._end_sent = False
        # Flow control: what the peer lets us send, and what we owe it.
        self._send_window = 65535  # connection
        self._stream_window = 65535
        self._peer_initial_window = 65535
        self._max_frame = 16384
        self._consumed = 0  # bytes taken by the reader, not yet granted back
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
        settings = struct.pack(
            ">HIHIHI",
            _SETTINGS_ENABLE_PUSH,
            0,
            _SETTINGS_INITIAL_WINDOW_SIZE,
            _RECV_WINDOW,
            _SETTINGS_HEADER_TABLE_SIZE,
            4096,
        )
        transport.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _window_update(0, _RECV_WINDOW - 65535)
            + _frame(_HEADERS, _END_HEADERS, _STREAM, self._headers)
        )
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
            self._send(_frame(_PING, 0, 0, bytes(8)))
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
        self._heard = self._loop.time()
        inbox = self._inbox
        inbox += data
        pos, size = 0, len(inbox)
        try:
            while size - pos >= 9:
                length = int.from_bytes(inbox[pos : pos + 3], "big")
                if size - pos < 9 + length:
                    break
                kind, flags = inbox[pos + 3], inbox[pos + 4]
                stream = int.from_bytes(inbox[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = inbox[pos + 9 : pos + 9 + length]
                pos += 9 + length
                self._on_frame(kind, flags, stream, payload)
        except (_hpack.HpackError, ValueError, IndexError) as error:
            self._fail(Internal(f"bad HTTP/2 data from the gateway: {error}"))
            return
        del inbox[:pos]
        if self._messages and self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    # -- frames --------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytearray) -> None:
        if kind == _DATA:
            if stream != _STREAM:
                return
            if flags & _PADDED:
                pad = payload[0]
                self._consumed += pad + 1  # padding is granted back at once
                payload = payload[1 : len(payload) - pad]
            self._data += payload
            self._parse_messages()
            if flags & _END_STREAM:
                self._end(Internal("the gateway ended the call without trailers"))
        elif kind == _HEADERS or kind == _CONTINUATION:
            if kind == _HEADERS:
                if flags & _PADDED:
                    pad = payload[0]
                    payload = payload[1 : len(payload) - pad]
                if flags & _PRIORITY:
                    payload = payload[5:]
                self._block = bytearray(payload)
                self._block_ends_stream = bool(flags & _END_STREAM)
            else:
                self._block += payload
            if flags & _END_HEADERS:
                # Decoded whatever the stream, to keep the HPACK table in step.
                fields = self._decoder.decode(bytes(self._block))
                self._block = bytearray()
                if stream == _STREAM:
                    self._on_headers(fields, self._block_ends_stream)
        elif kind == _SETTINGS:
            if flags & _ACK:
                return
            for offset in range(0, len(payload) - 5, 6):
                ident, value = struct.unpack_from(">HI", payload, offset)
                if ident == _SETTINGS_INITIAL_WINDOW_SIZE:
                    self._stream_window += value - self._peer_initial_window
                    self._peer_initial_window = value
                elif ident == _SETTINGS_MAX_FRAME_SIZE:
                    self._max_frame = value
            self._send(_frame(_SETTINGS, _ACK, 0, b""))
            self._schedule_flush()
        elif kind == _WINDOW_UPDATE:
            increment = _HEADER.unpack(payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self._send_window += increment
            elif stream == _STREAM:
                self._stream_window += increment
            self._schedule_flush()
        elif kind == _PING:
            if not flags & _ACK:
                self._send(_frame(_PING, _ACK, 0, bytes(payload)))
        elif kind == _RST_STREAM:
            if stream == _STREAM:
                code = _HEADER.unpack(payload)[0]
                status = _RST_CODES.get(code, grpc.StatusCode.INTERNAL)
                self._end(from_code(status.value[0], f"the gateway reset the stream (RST_STREAM with HTTP/2 error {code})"))
        elif kind == _GOAWAY:
            last_stream = _HEADER.unpack(payload[:4])[0] & 0x7FFFFFFF
            if last_stream < _STREAM:
                self._end(Unavailable("the gateway is going away (the call was not started)"))
            # Otherwise the call may finish; the connection closes after it.
        # Other frame types (PRIORITY, unknown extensions) are ignored, as the spec asks.

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
        code_number = int(status)
        self._end(None if code_number == 0 else from_code(code_number, message))

    def _parse_messages(self) -> None:
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
            self._send(_frame(_RST_STREAM, 0, _STREAM, _HEADER.pack(0x8)))
            self._end(Cancelled("the call was cancelled"))
        if self._transport is not None:
            self._transport.close()

    def done(self) -> bool:
        return bool(self._ended)

    # -- writing -----------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if self._transport is not None:
            self._transport.write(frame)

    def write(self, message: bytes) -> None:
        """Queues one serialised message; it goes out with the others of this pass of the loop."""
        if self._ended:
            raise self._ended[0] or Unavailable("the call has ended")
        if self._half_closed:
            raise RuntimeError("write after done_writing")
        self._unsent.append(b"\x00" + _HEADER.pack(len(message)) + message)
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
        """Sends what the windows allow, as DATA frames in one socket write."""
        self._flush_scheduled = False
        if self._transport is None or self._ended or self._end_sent:
            return
        frames: list[bytes] = []
        if self._unsent:
            pending = b"".join(self._unsent) if len(self._unsent) > 1 else self._unsent[0]
            allowed = min(self._send_window, self._stream_window, len(pending))
            sent = 0
            while sent < allowed:
                chunk = pending[sent : sent + min(self._max_frame, allowed - sent)]
                frames.append(_frame(_DATA, 0, _STREAM, chunk))
                sent += len(chunk)
            self._send_window -= sent
            self._stream_window -= sent
            self._unsent = [pending[sent:]] if sent < len(pending) else []
            self._unsent_bytes = len(pending) - sent
        if self._half_closed and not self._unsent:
            frames.append(_frame(_DATA, _END_STREAM, _STREAM, b""))
            self._end_sent = True
        if frames:
            self._transport.write(b"".join(frames))
        if self._unsent_bytes <= _HIGH_WATER:
            self._wake_writer()

    # -- reading -----------------------------------------------------------------------

    def _grant(self, taken: int) -> None:
        """The reader took `taken` bytes: let the gateway send that much more, in steps of a quarter window."""
        self._consumed += taken
        if self._consumed >= _RECV_WINDOW // 4 and not self._ended:
            increment, self._consumed = self._consumed, 0
            self._send(_window_update(0, increment) + _window_update(_STREAM, increment))

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
        self._grant(len(message) + 5)
        return message

    def read_ready(self) -> list[bytes]:
        """Every message already received (maybe none), without waiting."""
        if not self._messages:
            return []
        messages = list(self._messages)
        self._messages.clear()
        self._grant(sum(len(m) for m in messages) + 5 * len(messages))
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
    headers = _hpack.encode(fields)
    if not secure:
        context, server_hostname = None, None
    else:
        assert endpoint.tls is not None
        context, server_hostname = _tls_context(endpoint), endpoint.tls.server_name or host
    try:
        _, call = await asyncio.wait_for(
            loop.create_connection(
                lambda: StreamCall(loop, headers), host, port, ssl=context, server_hostname=server_hostname
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
