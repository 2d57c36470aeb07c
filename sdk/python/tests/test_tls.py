"""TLS: a gateway serving mutual TLS with a private CA, reached by a client and a worker.

Runs against `ASYNCGATE_TEST_TLS_URL` (an `https://` gateway that requires a
client certificate) with `ca.pem`, `client.pem` and `client.key` in
`ASYNCGATE_TEST_TLS_DIR`; skipped without them.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncgate
from support import GatewayTestCase, bounded, unique_queue

TLS_URL = os.environ.get("ASYNCGATE_TEST_TLS_URL", "")
TLS_DIR = Path(os.environ.get("ASYNCGATE_TEST_TLS_DIR", "."))


class TlsTest(GatewayTestCase):
    url = TLS_URL

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.tls = asyncgate.TLS(
            root_certificates=(TLS_DIR / "ca.pem").read_bytes(),
            certificate_chain=(TLS_DIR / "client.pem").read_bytes(),
            private_key=(TLS_DIR / "client.key").read_bytes(),
        )

    async def test_a_client_and_a_worker_with_certificates_serve_a_ticket(self) -> None:
        queue = unique_queue("tls")
        worker = self.worker(tls=self.tls)

        @worker.handler(queue)
        async def echo(task: asyncgate.TaskContext) -> object:
            return task.data

        await self.start(worker)
        async with asyncgate.Client(self.url, tls=self.tls) as client:
            ticket = await bounded(client.execute(queue, {"over": "tls"}))
        self.assertEqual((ticket.state, ticket.result), (asyncgate.TicketState.SUCCEEDED, {"over": "tls"}))

    async def test_the_bulk_streams_over_tls(self) -> None:
        queue = unique_queue("tls-bulk")
        worker = self.worker(tls=self.tls)

        @worker.handler(queue, inline=True)
        def echo(task: asyncgate.TaskContext) -> object:
            return task.payload

        await self.start(worker)
        async with asyncgate.Client(self.url, tls=self.tls) as client:
            tickets = await bounded(client.submit_many([asyncgate.Submit(queue, b"%d" % i) for i in range(10)]))
            async with client.results(t.id for t in tickets) as results:
                ends = {event.ticket_id: event.ticket.result async for event in results if event.ticket}
        self.assertEqual([ends[t.id] for t in tickets], [b"%d" % i for i in range(10)])

    async def test_without_a_client_certificate_or_the_ca_the_call_fails(self) -> None:
        ca_only = (TLS_DIR / "ca.pem").read_bytes()
        for tls in (ca_only, True):
            async with asyncgate.Client(self.url, tls=tls, call_timeout=10) as client:
                with self.subTest(tls=type(tls).__name__), self.assertRaises(asyncgate.Unavailable):
                    await client.list()
                with self.subTest(tls=type(tls).__name__, call="submit_many"), self.assertRaises(asyncgate.Unavailable):
                    await bounded(client.submit_many([asyncgate.Submit(unique_queue("tls"), b"x")]))
