"""Unit tests with no gateway: the resume cursor, backoff, payloads, errors, URLs, and the bulk streams' transport against fake peers."""

from __future__ import annotations

import asyncio
import unittest
from typing import Any
from unittest import mock

import grpc
import h2.config
import h2.connection
import h2.events
import hyperframe.frame

import asyncgate
from asyncgate._backoff import Backoff, equal_jitter
from asyncgate._channel import endpoint
from asyncgate._cursor import Cursor, Verdict
from asyncgate import _h2
from asyncgate._errors import from_rpc_error, is_transient
from asyncgate._proto.v1.ticket_pb2 import Ticket, TicketEvent

S, K = asyncgate.TicketState, asyncgate.EventKind


def event(seq: int, kind: asyncgate.EventKind, state: asyncgate.TicketState = S.RUNNING) -> TicketEvent:
    if kind == K.KEEPALIVE:
        return TicketEvent(seq=seq, kind=int(kind))
    return TicketEvent(seq=seq, kind=int(kind), ticket=Ticket(state=int(state), seq=seq))


class CursorTest(unittest.TestCase):
    def test_fresh_stream_follows_the_snapshot_then_live_events(self) -> None:
        cursor = Cursor()
        cursor.opened(None)
        self.assertEqual(cursor.accept(event(4, K.SNAPSHOT)), Verdict.DELIVER)
        self.assertEqual(cursor.seq, 4)
        self.assertEqual(cursor.accept(event(5, K.OUTPUT)), Verdict.DELIVER)
        self.assertEqual(cursor.accept(event(5, K.KEEPALIVE)), Verdict.KEEPALIVE)
        self.assertEqual(cursor.accept(event(6, K.STATE, S.SUCCEEDED)), Verdict.DELIVER_LAST)

    def test_a_terminal_first_snapshot_ends_a_fresh_stream(self) -> None:
        cursor = Cursor()
        cursor.opened(None)
        self.assertEqual(cursor.accept(event(9, K.SNAPSHOT, S.FAILED)), Verdict.DELIVER_LAST)

    def test_a_resume_drops_replayed_events_and_keeps_new_ones(self) -> None:
        cursor = Cursor()
        cursor.opened(None)
        for seq, kind in ((3, K.SNAPSHOT), (4, K.OUTPUT), (5, K.OUTPUT)):
            cursor.accept(event(seq, kind))
        cursor.opened(cursor.seq)  # reopened with after_seq=5
        self.assertEqual(cursor.accept(event(8, K.SNAPSHOT)), Verdict.DELIVER)
        self.assertEqual(cursor.seq, 5, "a resumed snapshot leaves the cursor alone")
        self.assertEqual(cursor.accept(event(5, K.OUTPUT)), Verdict.DUPLICATE)
        self.assertEqual(cursor.accept(event(6, K.OUTPUT)), Verdict.DELIVER)
        self.assertEqual(cursor.accept(event(7, K.OUTPUT)), Verdict.DELIVER)
        self.assertEqual(cursor.accept(event(9, K.STATE, S.SUCCEEDED)), Verdict.DELIVER_LAST)

    def test_after_a_terminal_resumed_snapshot_only_the_close_or_a_keepalive_ends(self) -> None:
        cursor = Cursor(seq=2)
        cursor.opened(2)
        self.assertEqual(cursor.accept(event(6, K.SNAPSHOT, S.SUCCEEDED)), Verdict.DELIVER)
        self.assertTrue(cursor.terminal_seen)
        # Replayed chunks carry the terminal ticket but do not end the stream.
        self.assertEqual(cursor.accept(event(3, K.OUTPUT, S.SUCCEEDED)), Verdict.DELIVER)
        self.assertEqual(cursor.accept(event(4, K.OUTPUT, S.SUCCEEDED)), Verdict.DELIVER)
        self.assertEqual(cursor.accept(event(6, K.KEEPALIVE)), Verdict.KEEPALIVE)


class BackoffTest(unittest.TestCase):
    def test_delays_are_jittered_between_half_and_the_ceiling(self) -> None:
        self.assertEqual(equal_jitter(0, 0.1, 5.0, 0.0), 0.05)
        self.assertEqual(equal_jitter(0, 0.1, 5.0, 1.0), 0.1)
        self.assertEqual(equal_jitter(3, 0.1, 5.0, 1.0), 0.8)
        self.assertEqual(equal_jitter(30, 0.1, 5.0, 1.0), 5.0)
        self.assertEqual(equal_jitter(10_000, 0.1, 5.0, 0.0), 2.5)

    def test_backoff_counts_and_resets(self) -> None:
        backoff = Backoff(0.1, 5.0)
        delays = [backoff.next_delay() for _ in range(20)]
        self.assertTrue(all(0.05 <= delay <= 5.0 for delay in delays), delays)
        self.assertGreaterEqual(delays[-1], 2.5)
        backoff.reset()
        self.assertLessEqual(backoff.next_delay(), 0.1)


class PayloadTest(unittest.TestCase):
    def test_bytes_travel_as_binary_and_the_rest_as_json(self) -> None:
        self.assertEqual(asyncgate.to_payload(b"\x00\xff").WhichOneof("kind"), "binary")
        self.assertEqual(asyncgate.to_payload({"a": 1}).WhichOneof("kind"), "json")
        payload = asyncgate.bytes_payload(b"x", "text/plain")
        self.assertIs(asyncgate.to_payload(payload), payload)

    def test_json_round_trips_with_integers_kept(self) -> None:
        value = {"n": 1, "x": 2.5, "list": [1, "two", None, True], "nested": {"big": 2**40}}
        self.assertEqual(asyncgate.decode_payload(asyncgate.json_payload(value)), value)
        self.assertIsInstance(asyncgate.decode_payload(asyncgate.json_payload(3)), int)

    def test_non_json_values_are_refused(self) -> None:
        with self.assertRaises(Exception):
            asyncgate.to_payload(object())


class ErrorsTest(unittest.TestCase):
    class FakeRpcError(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode, details: str) -> None:
            self._code, self._details = code, details

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return self._details

    def test_each_code_has_its_class_carrying_code_and_message(self) -> None:
        error = from_rpc_error(self.FakeRpcError(grpc.StatusCode.NOT_FOUND, "no ticket x"))
        self.assertIsInstance(error, asyncgate.NotFound)
        self.assertIsInstance(error, asyncgate.AsyncgateError)
        self.assertEqual((error.code, error.message), (grpc.StatusCode.NOT_FOUND, "no ticket x"))
        self.assertEqual(str(error), "NOT_FOUND: no ticket x")

    def test_only_broken_connections_are_transient(self) -> None:
        self.assertTrue(is_transient(asyncgate.Unavailable("gone")))
        self.assertTrue(is_transient(asyncgate.Internal("Received RST_STREAM with error code 2")))
        self.assertFalse(is_transient(asyncgate.Internal("internal error")))
        self.assertFalse(is_transient(asyncgate.InvalidArgument("bad queue")))


class EndpointTest(unittest.TestCase):
    def test_urls_choose_plaintext_or_tls(self) -> None:
        self.assertIsNone(endpoint("http://127.0.0.1:1", None, None).tls)
        self.assertIsNone(endpoint("127.0.0.1:1", None, None).tls)
        self.assertIsNotNone(endpoint("https://gw:443", None, None).tls)
        tls = asyncgate.TLS(root_certificates=b"pem")
        self.assertIs(endpoint("gw:443", None, tls).tls, tls)

    def test_the_api_key_is_a_bearer_header(self) -> None:
        self.assertEqual(endpoint("gw:1", "k3y", None).metadata, (("authorization", "Bearer k3y"),))
        self.assertEqual(endpoint("gw:1", None, None).metadata, ())
        with self.assertRaises(ValueError):
            endpoint("gw:1", "two words", None)

    def test_bad_urls_are_refused(self) -> None:
        for url in ("ftp://gw:1", "http://", "http://gw:1/path"):
            with self.subTest(url=url), self.assertRaises(ValueError):
                endpoint(url, None, None)


class SubmitEncodingTest(unittest.TestCase):
    def test_the_hand_framed_request_is_what_protobuf_writes(self) -> None:
        for submit in (
            asyncgate.Submit("q", b"x" * 1024),
            asyncgate.Submit("queue.name-1", b""),
            asyncgate.Submit("q", b"a" * 300_000),
            asyncgate.Submit("q", {"json": True}),
            asyncgate.Submit("q", b"ab", priority=3, metadata={"k": "v"}, timeout=5),
        ):
            with self.subTest(submit=submit):
                self.assertEqual(submit.encode(), submit.to_proto().SerializeToString())


class FakeGateway(asyncio.Protocol):
    """A peer that answers one gRPC call as its test scripts, speaking HTTP/2 through `h2`'s server side.

    `on_call(gateway)` runs once the call's headers arrived; it then uses
    `respond`, `message` (sent as the windows allow), `trailers`, `reset`
    and `raw` (bytes put on the wire as they are).
    """

    def __init__(self, on_call: Any) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.on_call = on_call
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()  # gRPC bytes waiting for window
        self.trailer: list[tuple[bytes, bytes]] | None = None
        self.received = bytearray()  # the client's gRPC bytes
        self.on_data: Any = None  # called with each DATA frame the client sends
        self.client_ended = asyncio.Event()  # the client half-closed (END_STREAM)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.on_call(self)
            elif isinstance(event, h2.events.DataReceived):
                self.received += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if self.on_data is not None:
                    self.on_data(self)
            elif isinstance(event, h2.events.StreamEnded):
                self.client_ended.set()
        self.pump()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def raw(self, data: bytes) -> None:
        self.flush()
        assert self.transport is not None
        self.transport.write(data)

    def respond(self, status: bytes = b"200", end: bool = False, **extra: bytes) -> None:
        fields = [(b":status", status), (b"content-type", b"application/grpc")]
        fields += [(name.replace("_", "-").encode(), value) for name, value in extra.items()]
        self.conn.send_headers(1, fields, end_stream=end)
        self.flush()

    def message(self, body: bytes) -> None:
        self.pending += b"\x00" + len(body).to_bytes(4, "big") + body
        self.pump()

    def trailers(self, status: int, message: str = "") -> None:
        self.trailer = [(b"grpc-status", str(status).encode()), (b"grpc-message", message.encode())]
        self.pump()

    def reset(self, code: int) -> None:
        self.conn.reset_stream(1, code)
        self.flush()

    def pump(self) -> None:
        """Sends what the client's windows allow; the trailers once everything went."""
        while self.pending:
            room = min(self.conn.local_flow_control_window(1), self.conn.max_outbound_frame_size, len(self.pending))
            if room <= 0:
                break
            self.conn.send_data(1, bytes(self.pending[:room]))
            del self.pending[:room]
        if not self.pending and self.trailer is not None:
            self.conn.send_headers(1, self.trailer, end_stream=True)
            self.trailer = None
        self.flush()


class DirectStreamTest(unittest.IsolatedAsyncioTestCase):
    """The SDK's HTTP/2 transport against peers that are not gateways (no gateway needed)."""

    async def peer(self, on_connect: object) -> str:
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)  # type: ignore[arg-type]
        self.addAsyncCleanup(server.wait_closed)
        self.addCleanup(server.close)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def test_a_silent_peer_fails_the_call_by_keepalive(self) -> None:
        async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                pass  # takes everything, answers nothing (not even PING)
            writer.close()

        url = await self.peer(black_hole)
        with mock.patch.object(_h2, "_KEEPALIVE", 0.1), mock.patch.object(_h2, "_KEEPALIVE_TIMEOUT", 0.1):
            async with asyncgate.Client(url) as client:
                with self.assertRaises(asyncgate.Unavailable) as caught:
                    await asyncio.wait_for(client.submit_many([asyncgate.Submit("q", b"x")]), 10)
        self.assertIn("keepalive", caught.exception.message)

    async def test_a_peer_that_hangs_up_fails_the_call_as_unavailable(self) -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(10)
            writer.close()

        url = await self.peer(hang_up)
        async with asyncgate.Client(url) as client:
            results = await asyncio.wait_for(
                client.submit_many([asyncgate.Submit("q", b"x")] * 3, return_exceptions=True), 10
            )
        self.assertTrue(all(isinstance(r, asyncgate.Unavailable) for r in results), results)
        async with asyncgate.Client("http://127.0.0.1:1") as client:  # nobody listens
            with self.assertRaises(asyncgate.Unavailable):
                await asyncio.wait_for(client.submit_many([asyncgate.Submit("q", b"x")]), 10)


    async def fake(self, on_call: Any) -> _h2.StreamCall:
        """A call to a `FakeGateway` running `on_call`."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FakeGateway(on_call), "127.0.0.1", 0)
        self.addAsyncCleanup(server.wait_closed)
        self.addCleanup(server.close)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        call = await _h2.open_stream(endpoint(url, None, None), "/asyncgate.v1.Gateway/SubmitStream")
        self.addCleanup(call.cancel)
        return call

    async def test_messages_and_the_ok_trailers_end_the_call_cleanly(self) -> None:
        def on_call(gateway: FakeGateway) -> None:
            gateway.respond()
            for body in (b"one", b"", b"three"):
                gateway.message(body)
            gateway.trailers(0)

        call = await self.fake(on_call)
        self.assertEqual([await bounded(call.read()) for _ in range(4)], [b"one", b"", b"three", None])

    async def test_a_message_larger_than_our_window_arrives(self) -> None:
        # The part of a message not yet whole is granted back as it comes.
        body = bytes(range(256)) * (6 * 1024 * 1024 // 256)

        def on_call(gateway: FakeGateway) -> None:
            gateway.respond()
            gateway.message(body)
            gateway.trailers(0)

        call = await self.fake(on_call)
        self.assertEqual(await bounded(call.read()), body)
        self.assertIsNone(await bounded(call.read()))

    async def test_a_graceful_goaway_lets_the_call_finish(self) -> None:
        # A gateway shutting down: GOAWAY (NO_ERROR, last stream 1), then the
        # rest of the call. `h2` alone would refuse every frame after it.
        def on_call(gateway: FakeGateway) -> None:
            gateway.respond()
            gateway.raw(hyperframe.frame.GoAwayFrame(0, last_stream_id=2**31 - 1, error_code=0).serialize())
            gateway.message(b"drain")
            gateway.on_data = finish

        def finish(gateway: FakeGateway) -> None:
            # Our answer came through after the GOAWAY: the gateway ends the call.
            gateway.raw(hyperframe.frame.GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
            gateway.message(bytes(gateway.received))
            gateway.trailers(0)

        call = await self.fake(on_call)
        self.assertEqual(await bounded(call.read()), b"drain")
        call.write(b"still-sending")
        self.assertEqual(await bounded(call.read()), b"\x00\x00\x00\x00\x0dstill-sending")
        self.assertIsNone(await bounded(call.read()))

    async def test_a_goaway_before_the_call_or_with_an_error_is_unavailable(self) -> None:
        for last_stream, code in ((0, 0), (1, 2)):
            with self.subTest(last_stream=last_stream, code=code):
                call = await self.fake(
                    lambda gateway: gateway.raw(
                        hyperframe.frame.GoAwayFrame(0, last_stream_id=last_stream, error_code=code).serialize()
                    )
                )
                with self.assertRaises(asyncgate.Unavailable):
                    await bounded(call.read())

    async def test_a_reset_stream_is_an_error_a_retry_may_cure(self) -> None:
        for code, kind in ((2, asyncgate.Internal), (7, asyncgate.Unavailable), (8, asyncgate.Cancelled)):
            with self.subTest(code=code):
                call = await self.fake(lambda gateway: gateway.reset(code))
                with self.assertRaises(kind) as caught:
                    await bounded(call.read())
                self.assertIn("RST_STREAM", caught.exception.message)
                if code != 8:
                    self.assertTrue(is_transient(caught.exception))

    async def test_a_trailers_only_answer_is_the_call_s_error(self) -> None:
        call = await self.fake(lambda gateway: gateway.respond(end=True, grpc_status=b"16", grpc_message=b"no%20key"))
        with self.assertRaises(asyncgate.Unauthenticated) as caught:
            await bounded(call.read())
        self.assertEqual(caught.exception.message, "no key")
        call = await self.fake(lambda gateway: gateway.respond(status=b"503", end=True))
        with self.assertRaises(asyncgate.Unavailable):
            await bounded(call.read())

    async def test_what_we_write_arrives_framed_then_the_half_close(self) -> None:
        called: asyncio.Future[FakeGateway] = asyncio.get_running_loop().create_future()

        def on_call(gateway: FakeGateway) -> None:
            gateway.respond()
            called.set_result(gateway)

        call = await self.fake(on_call)
        big = b"b" * (200 * 1024)  # past the fake's default 64 KiB windows
        for body in (b"a", big, b""):
            call.write(body)
        call.done_writing()
        await bounded(call.drain())
        gateway = await bounded(called)
        await bounded(gateway.client_ended.wait())
        self.assertEqual(
            bytes(gateway.received),
            b"\x00\x00\x00\x00\x01a" + b"\x00" + len(big).to_bytes(4, "big") + big + b"\x00\x00\x00\x00\x00",
        )


async def bounded(awaitable: Any, timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


if __name__ == "__main__":
    unittest.main()
