"""Shared pieces of the SDK's tests: the gateway under test, unique queues, a breakable TCP proxy.

The tests run against a real gateway whose URL is in `ASYNCGATE_TEST_URL`
(`tests/tests/e2e/python_sdk.rs` starts one with short heartbeats and
backoffs and sets it); without it the gateway tests are skipped. A gateway
with API keys, when one is given, is in `ASYNCGATE_TEST_KEYED_URL` with the
keys in `ASYNCGATE_TEST_CLIENT_KEY` and `ASYNCGATE_TEST_WORKER_KEY`; one
serving mutual TLS in `ASYNCGATE_TEST_TLS_URL`, with `ca.pem`, `client.pem`
and `client.key` in `ASYNCGATE_TEST_TLS_DIR`.

Every test uses its own queue (`unique_queue`) so that tests sharing one
gateway never see each other's tickets. Nothing sleeps to synchronise:
tests wait on events (asyncio.Event, the worker's sessions, ticket events)
and every wait is bounded by `PATIENCE`.
"""

from __future__ import annotations

import asyncio
import os
import unittest
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import asyncgate

#: Far above what any step needs; a hung step fails instead of hanging the run.
PATIENCE = 30.0

URL = os.environ.get("ASYNCGATE_TEST_URL", "")
KEYED_URL = os.environ.get("ASYNCGATE_TEST_KEYED_URL", "")
CLIENT_KEY = os.environ.get("ASYNCGATE_TEST_CLIENT_KEY", "")
WORKER_KEY = os.environ.get("ASYNCGATE_TEST_WORKER_KEY", "")

T = TypeVar("T")


def unique_queue(prefix: str) -> str:
    """A queue no other test uses."""
    return f"py-sdk-{prefix}-{uuid.uuid4().hex[:12]}"


async def bounded(awaitable: Awaitable[T], timeout: float = PATIENCE) -> T:
    """`awaitable`, failing the test (TimeoutError) if it takes longer than `timeout`."""
    return await asyncio.wait_for(awaitable, timeout)


class GatewayTestCase(unittest.IsolatedAsyncioTestCase):
    """A test against `url` (`ASYNCGATE_TEST_URL` unless a subclass says otherwise), with a client and worker helpers."""

    url = URL

    async def asyncSetUp(self) -> None:
        if not self.url:
            self.skipTest("no gateway URL in the environment (tests/tests/e2e/python_sdk.rs sets it)")
        self.client = asyncgate.Client(self.url)
        self.addAsyncCleanup(self.client.close)

    def worker(self, url: str | None = None, **options: Any) -> asyncgate.Worker:
        """A worker with fast reconnects (started by `start`)."""
        options.setdefault("reconnect_backoff", (0.02, 0.2))
        options.setdefault("name", f"py-sdk-test-{self.id().rsplit('.', 1)[-1]}")
        return asyncgate.Worker(url or self.url, **options)

    async def start(self, worker: asyncgate.Worker) -> asyncio.Task[None]:
        """Runs `worker` until the test ends (then drains it); returns once it is connected."""
        running = asyncio.create_task(worker.run(handle_signals=False))

        async def stop() -> None:
            if not running.done():
                worker.stop()
            await bounded(running)

        self.addAsyncCleanup(stop)
        connected = asyncio.create_task(worker.wait_connected())
        done, _ = await bounded(asyncio.wait({connected, running}, return_when=asyncio.FIRST_COMPLETED))
        if running in done:
            connected.cancel()
            running.result()  # raises what ended it
            self.fail("the worker stopped before connecting")
        return running


class Proxy:
    """A TCP forwarder to the gateway whose connections the test can break (RST) at will.

    It keeps listening after a break, so clients reconnect through it: that is
    how the tests break a watch or a worker stream without restarting the gateway.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.BaseTransport] = set()
        #: Connections accepted so far.
        self.accepted = 0

    async def start(self) -> str:
        """Starts listening; the URL to give clients."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._transports.update({writer.transport, up_writer.transport})
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()

    def break_connections(self) -> None:
        """Resets every connection through the proxy (both sides)."""
        for transport in list(self._transports):
            transport.abort()  # type: ignore[attr-defined]
        self._transports.clear()

    async def close(self) -> None:
        self.break_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
