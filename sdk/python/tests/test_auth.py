"""API keys: refused without or with a wrong key, accepted with the right one, for clients and workers.

Runs against the keyed gateway of `ASYNCGATE_TEST_KEYED_URL` (a client key
in `ASYNCGATE_TEST_CLIENT_KEY`, a worker key for the queues `py-sdk-keyed-*`
in `ASYNCGATE_TEST_WORKER_KEY`); skipped without it.
"""

from __future__ import annotations

import uuid

import asyncgate
from support import CLIENT_KEY, KEYED_URL, WORKER_KEY, GatewayTestCase, bounded, unique_queue


class ApiKeyTest(GatewayTestCase):
    url = KEYED_URL

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.keyed = asyncgate.Client(self.url, api_key=CLIENT_KEY)
        self.addAsyncCleanup(self.keyed.close)

    async def test_who_am_i_tells_a_key_its_role_and_methods(self) -> None:
        me = await self.keyed.who_am_i()
        self.assertEqual(me.role, "client")
        self.assertIn("/asyncgate.v1.Gateway/Submit", me.methods)
        self.assertNotIn("/asyncgate.v1.Admin/PauseQueue", me.methods)
        self.assertTrue(me.sees_payloads)
        async with asyncgate.Client(self.url, api_key="not-a-key") as wrong:
            with self.assertRaises(asyncgate.Unauthenticated):
                await wrong.who_am_i()

    async def test_calls_without_a_valid_key_are_refused(self) -> None:
        with self.assertRaises(asyncgate.Unauthenticated):
            await self.client.submit(unique_queue("keyed"), "x")
        async with asyncgate.Client(self.url, api_key="not-a-key") as wrong:
            with self.assertRaises(asyncgate.Unauthenticated):
                await wrong.list()
        # A worker's key cannot submit: the wrong role.
        async with asyncgate.Client(self.url, api_key=WORKER_KEY) as worker_key:
            with self.assertRaises(asyncgate.PermissionDenied):
                await worker_key.submit(unique_queue("keyed"), "x")

    async def test_the_bulk_streams_are_refused_without_a_key_and_served_with_it(self) -> None:
        queue = unique_queue("keyed")
        refused = await bounded(self.client.submit_many([asyncgate.Submit(queue, b"x")] * 3, return_exceptions=True))
        self.assertTrue(all(isinstance(r, asyncgate.Unauthenticated) for r in refused), refused)
        with self.assertRaises(asyncgate.Unauthenticated):
            async for _ in self.client.results([str(uuid.uuid4())]):
                pass
        tickets = await bounded(self.keyed.submit_many([asyncgate.Submit(queue, b"x")] * 3))
        self.assertEqual(len({t.id for t in tickets}), 3)
        async with self.keyed.results((t.id for t in tickets), terminal_only=False) as results:
            first = await bounded(results.next())
        assert first is not None
        self.assertEqual((first.kind, first.ticket.state if first.ticket else None), (asyncgate.EventKind.SNAPSHOT, asyncgate.TicketState.PENDING))

    async def test_a_worker_with_a_client_key_is_refused_and_stops(self) -> None:
        worker = self.worker(api_key=CLIENT_KEY)
        worker.register(unique_queue("keyed"), lambda task: None)
        with self.assertRaises(asyncgate.PermissionDenied):
            await bounded(worker.run(handle_signals=False))

    async def test_the_right_keys_serve_a_ticket(self) -> None:
        queue = unique_queue("keyed")
        worker = self.worker(api_key=WORKER_KEY)

        @worker.handler(queue)
        async def upper(task: asyncgate.TaskContext) -> str:
            return str(task.data).upper()

        await self.start(worker)
        ticket = await bounded(self.keyed.execute(queue, "with keys"))
        self.assertEqual((ticket.state, ticket.result), (asyncgate.TicketState.SUCCEEDED, "WITH KEYS"))
        self.assertEqual((await self.keyed.get(ticket.id)).result, "WITH KEYS")
