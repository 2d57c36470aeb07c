"""Unit tests with no gateway: the resume cursor, backoff, payloads, errors and URLs."""

from __future__ import annotations

import asyncio
import unittest
from unittest import mock

import grpc

import asyncgate
from asyncgate._backoff import Backoff, equal_jitter
from asyncgate._channel import endpoint
from asyncgate._cursor import Cursor, Verdict
from asyncgate import _h2, _hpack
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


class HpackTest(unittest.TestCase):
    def test_the_rfc_examples_decode_with_huffman_and_the_dynamic_table(self) -> None:
        # RFC 7541 C.4.1 and C.4.2: requests with Huffman coding, the second indexing the first.
        decoder = _hpack.Decoder()
        first = decoder.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
        self.assertEqual(first[-1], (b":authority", b"www.example.com"))
        second = decoder.decode(bytes.fromhex("828684be5886a8eb10649cbf"))
        self.assertEqual(second[-2:], [(b":authority", b"www.example.com"), (b"cache-control", b"no-cache")])
        # C.6.1 and C.6.2: responses through a 256-byte table, so the second evicts.
        decoder = _hpack.Decoder(256)
        decoder.decode(
            bytes.fromhex(
                "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3"
            )
        )
        self.assertEqual(
            decoder.decode(bytes.fromhex("4883640effc1c0bf")),
            [
                (b":status", b"307"),
                (b"cache-control", b"private"),
                (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
                (b"location", b"https://www.example.com"),
            ],
        )

    def test_what_we_encode_decodes_back(self) -> None:
        fields = [(b":method", b"POST"), (b"te", b"trailers"), (b"authorization", b"Bearer " + b"k" * 300)]
        self.assertEqual(_hpack.Decoder().decode(_hpack.encode(fields)), fields)

    def test_bad_blocks_are_refused(self) -> None:
        for block in (b"\xff", b"\xbf", b"\x41\x85\xff"):  # truncated integer, unknown index, bad Huffman
            with self.subTest(block=block), self.assertRaises(_hpack.HpackError):
                _hpack.Decoder().decode(block)


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


if __name__ == "__main__":
    unittest.main()
