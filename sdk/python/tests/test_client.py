"""`Client` against a real gateway: submit, get, execute, submit_many, list, watch with resume, typed errors."""

from __future__ import annotations

import asyncio
import uuid

import grpc

import asyncgate
from support import GatewayTestCase, Proxy, bounded, unique_queue

S, K = asyncgate.TicketState, asyncgate.EventKind


class ClientTest(GatewayTestCase):
    async def echo_worker(self, queue: str) -> asyncgate.Worker:
        worker = self.worker(max_in_flight=8)

        @worker.handler(queue)
        async def echo(task: asyncgate.TaskContext) -> asyncgate.PayloadLike:
            data = task.data
            return data.upper() if isinstance(data, str) else data

        await self.start(worker)
        return worker

    async def test_submit_then_get_waits_for_the_result(self) -> None:
        queue = unique_queue("submit")
        ticket = await self.client.submit(queue, "hello", metadata={"team": "py"}, priority=5, max_attempts=2)
        self.assertEqual(ticket.state, S.PENDING)
        self.assertEqual((ticket.queue, ticket.priority, ticket.max_attempts), (queue, 5, 2))
        self.assertEqual(ticket.metadata, {"team": "py"})
        self.assertIn("no worker", ticket.waiting_reason.lower())
        await self.echo_worker(queue)
        done = await bounded(self.client.get(ticket.id, wait=20))
        self.assertEqual(done.state, S.SUCCEEDED, done)
        self.assertEqual(done.result, "HELLO")
        self.assertTrue(done.done)
        self.assertIsNotNone(done.finished_at)

    async def test_a_delayed_ticket_waits_scheduled_then_runs(self) -> None:
        queue = unique_queue("delayed")
        ticket = await self.client.submit(queue, "later", delay=0.3)
        self.assertEqual(ticket.state, S.PENDING)
        self.assertIsNotNone(ticket.scheduled_for)
        self.assertTrue(ticket.waiting_reason.startswith("scheduled for "), ticket.waiting_reason)
        # The same through submit_many, with a time.
        at = ticket.scheduled_for
        [again] = await self.client.submit_many([asyncgate.Submit(queue, "at", not_before=at)])
        self.assertEqual(again.scheduled_for, at)
        await self.echo_worker(queue)
        done = await bounded(self.client.get(ticket.id, wait=20))
        self.assertEqual((done.state, done.result), (S.SUCCEEDED, "LATER"))
        assert done.finished_at is not None and at is not None
        self.assertGreaterEqual(done.finished_at, at)

    async def test_idempotency_key_returns_the_original_ticket(self) -> None:
        queue = unique_queue("idem")
        key = uuid.uuid4().hex
        first = await self.client.submit(queue, 1, idempotency_key=key)
        again = await self.client.submit(queue, 2, idempotency_key=key)
        self.assertEqual(first.id, again.id)

    async def test_execute_iterates_to_the_result_or_awaits_it(self) -> None:
        queue = unique_queue("execute")
        await self.echo_worker(queue)
        events = [event async for event in self.client.execute(queue, "stream me")]
        self.assertEqual(events[0].kind, K.SNAPSHOT)
        self.assertEqual(events[-1].kind, K.STATE)
        last = events[-1].ticket
        assert last is not None
        self.assertEqual((last.state, last.result), (S.SUCCEEDED, "STREAM ME"))
        self.assertEqual([e.seq for e in events], sorted({e.seq for e in events}), "in order, no duplicate")

        ticket = await bounded(self.client.execute(queue, b"binary body"))
        self.assertEqual((ticket.state, ticket.result), (S.SUCCEEDED, b"binary body"))
        json_ticket = await bounded(self.client.execute(queue, {"n": [1, 2]}))
        self.assertEqual(json_ticket.result, {"n": [1, 2]})

    async def test_submit_many_keeps_the_order_of_the_requests(self) -> None:
        queue = unique_queue("many")
        requests = [asyncgate.Submit(queue, f"item-{i}", metadata={"i": str(i)}) for i in range(40)]
        tickets = await bounded(self.client.submit_many(requests, in_flight=8))
        self.assertEqual([t.metadata["i"] for t in tickets], [str(i) for i in range(40)])
        self.assertEqual(len({t.id for t in tickets}), 40)

        # A refused request: raised, or returned in its place.
        mixed = [asyncgate.Submit(queue, 1), asyncgate.Submit("bad queue!", 2), asyncgate.Submit(queue, 3)]
        with self.assertRaises(asyncgate.InvalidArgument):
            await self.client.submit_many(mixed)
        results = await self.client.submit_many(mixed, return_exceptions=True)
        self.assertIsInstance(results[0], asyncgate.Ticket)
        self.assertIsInstance(results[1], asyncgate.InvalidArgument)
        self.assertIsInstance(results[2], asyncgate.Ticket)

    async def test_list_filters_by_queue_state_and_metadata_across_pages(self) -> None:
        queue = unique_queue("list")
        tickets = await self.client.submit_many(
            [asyncgate.Submit(queue, i, metadata={"parity": "even" if i % 2 == 0 else "odd"}) for i in range(5)]
        )
        # Concurrent submits: creation (id) order is not the order of the requests.
        ids = sorted(t.id for t in tickets)
        page = await self.client.list(queue=queue, page_size=2)
        self.assertEqual([t.id for t in page.tickets], ids[:2])
        self.assertTrue(page.next_page_token)
        everything = [t.id async for t in self.client.list_all(queue=queue, page_size=2)]
        self.assertEqual(everything, ids)
        even = await self.client.list(queue=queue, metadata={"parity": "even"})
        self.assertEqual(len(even.tickets), 3)
        newest = await self.client.list(queue=queue, states=[S.PENDING], newest_first=True, page_size=1)
        self.assertEqual(newest.tickets[0].id, ids[-1])
        none = await self.client.list(queue=queue, states=[S.SUCCEEDED])
        self.assertEqual(none.tickets, [])

    async def test_cancel_a_pending_ticket(self) -> None:
        ticket = await self.client.submit(unique_queue("cancel-pending"), "x")
        cancelled = await self.client.cancel(ticket.id, "changed my mind")
        self.assertEqual(cancelled.state, S.CANCELLED)
        assert cancelled.error is not None
        self.assertIn("changed my mind", cancelled.error.message)
        again = await self.client.cancel(ticket.id, "again")  # idempotent on a cancelled ticket
        self.assertEqual(again.state, S.CANCELLED)

    async def test_a_watch_closed_early_ends_its_call(self) -> None:
        ticket = await self.client.submit(unique_queue("early"), "x")
        async with self.client.watch(ticket.id) as events:
            first = await bounded(events.__anext__())
            self.assertEqual(first.kind, K.SNAPSHOT)
        with self.assertRaises(StopAsyncIteration):
            await events.__anext__()
        # The client still works after the cancelled call.
        self.assertEqual((await self.client.get(ticket.id)).state, S.PENDING)

    async def test_bad_input_raises_the_typed_error_with_the_gateways_message(self) -> None:
        with self.assertRaises(asyncgate.InvalidArgument) as caught:
            await self.client.submit("bad queue!", "x")
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("queue", caught.exception.message)
        self.assertIn("bad queue!", caught.exception.message)
        with self.assertRaises(asyncgate.InvalidArgument) as caught:
            await self.client.submit(unique_queue("bad"), "x", priority=5000)
        self.assertIn("priority", caught.exception.message)
        with self.assertRaises(asyncgate.InvalidArgument) as caught:
            await self.client.get("not-a-uuid")
        self.assertIn("id", caught.exception.message)
        with self.assertRaises(asyncgate.NotFound):
            await self.client.get(str(uuid.uuid4()))
        with self.assertRaises(asyncgate.NotFound):
            await bounded(self.client.watch(str(uuid.uuid4())).result())
        # A ticket without a callback shows none, and has none to retry.
        plain = await self.client.submit(unique_queue("cb"), "x")
        self.assertIsNone(plain.callback)
        await self.client.cancel(plain.id)
        with self.assertRaises(asyncgate.FailedPrecondition):
            await self.client.admin.retry_callback(plain.id)
        # The test gateway has no --callback-allow list: a callback is refused,
        # the message naming the setting; a malformed one names the field.
        with self.assertRaises(asyncgate.FailedPrecondition) as refused:
            await self.client.submit(unique_queue("cb"), "x", callback="https://hooks.example.com/done")
        self.assertIn("--callback-allow", refused.exception.message)
        with self.assertRaises(asyncgate.InvalidArgument) as caught:
            await self.client.submit_many([asyncgate.Submit(unique_queue("cb"), b"x", callback="ftp://h/x")])
        self.assertIn("callback", caught.exception.message)
        # Targets set through the admin API go through the same allowlist; a
        # malformed one names the field.
        with self.assertRaises(asyncgate.FailedPrecondition) as refused:
            await self.client.admin.set_queue_target(unique_queue("t"), "grpc://orders.example.com:443/shop.v1.Orders/Place")
        self.assertIn("--callback-allow", refused.exception.message)
        with self.assertRaises(asyncgate.InvalidArgument) as caught:
            await self.client.admin.set_queue_target(unique_queue("t"), "grpc://orders.example.com:443/NoMethod")
        self.assertIn("target", caught.exception.message)

    async def test_watch_resumes_after_a_broken_connection_without_gap_or_duplicate(self) -> None:
        queue = unique_queue("resume")
        first_half, second_half = asyncio.Event(), asyncio.Event()
        worker = self.worker(max_in_flight=1)

        @worker.handler(queue)
        async def chunks(task: asyncgate.TaskContext) -> str:
            for i in range(3):
                await task.output(f"chunk-{i}")
            first_half.set()
            await second_half.wait()
            for i in range(3, 6):
                await task.output(f"chunk-{i}")
            return "done"

        await self.start(worker)
        proxy = Proxy(self.url)
        self.addAsyncCleanup(proxy.close)
        watcher = asyncgate.Client(
            await proxy.start(), resume=asyncgate.ResumeOptions(min_backoff=0.05, max_backoff=0.2)
        )
        self.addAsyncCleanup(watcher.close)

        ticket = await self.client.submit(queue, "go")
        # after_seq=0: every chunk, including those sent before the watch opened.
        stream = watcher.watch(ticket.id, after_seq=0)
        outputs: list[str] = []
        kinds: list[asyncgate.EventKind] = []

        async def follow() -> None:
            async for event in stream:
                kinds.append(event.kind)
                if event.kind == K.OUTPUT:
                    outputs.append(event.output)
                    if len(outputs) == 3:
                        await first_half.wait()
                        proxy.break_connections()
                        # The rest is produced while the watcher reconnects: it
                        # is replayed after the resumed snapshot.
                        second_half.set()

        await bounded(follow())
        self.assertEqual(outputs, [f"chunk-{i}" for i in range(6)], kinds)
        self.assertGreaterEqual(proxy.accepted, 2, "the watch reconnected")
        self.assertGreaterEqual(kinds.count(K.SNAPSHOT), 2, "a resumed stream starts with a snapshot")
        final = await self.client.get(ticket.id)
        self.assertEqual((final.state, final.result), (S.SUCCEEDED, "done"))

        # An explicit after_seq replays only the chunks after it.
        replay = [event async for event in self.client.watch(ticket.id, after_seq=stream.after_seq)]
        self.assertEqual([e.kind for e in replay], [K.SNAPSHOT])
        seqs = [e.seq async for e in self.client.watch(ticket.id, after_seq=0) if e.kind == K.OUTPUT]
        self.assertEqual(len(seqs), 6)
