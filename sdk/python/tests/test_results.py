"""`Client.results` (many tickets on one WatchTickets stream, resumed per ticket) and `Client.admin`, against a real gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncgate
from support import GatewayTestCase, Proxy, bounded, unique_queue

S, K = asyncgate.TicketState, asyncgate.EventKind


class ResultsTest(GatewayTestCase):
    async def echo_worker(self, queue: str, **options: object) -> asyncgate.Worker:
        worker = self.worker(max_in_flight=16, **options)

        @worker.handler(queue, inline=True)
        def echo(task: asyncgate.TaskContext) -> asyncgate.PayloadLike:
            return task.payload

        await self.start(worker)
        return worker

    async def test_terminal_only_yields_each_tickets_end_once(self) -> None:
        queue = unique_queue("results")
        tickets = await self.client.submit_many([asyncgate.Submit(queue, f"n{i}".encode()) for i in range(50)])
        unknown = str(uuid.uuid4())
        async with self.client.results([t.id for t in tickets[:10]]) as results:
            results.add_many(t.id for t in tickets[10:])
            results.add(tickets[0].id)  # twice is once
            results.add(unknown)
            self.assertEqual(results.pending, 51)
            await self.echo_worker(queue)
            ends: dict[str, asyncgate.Event] = {}
            errors: dict[str, asyncgate.AsyncgateError] = {}

            async def collect() -> None:
                async for event in results:
                    if event.error is not None:
                        errors[event.ticket_id] = event.error
                        continue
                    self.assertNotIn(event.ticket_id, ends, "one end per ticket")
                    ends[event.ticket_id] = event

            await bounded(collect())
        self.assertEqual(set(ends), {t.id for t in tickets})
        for i, ticket in enumerate(tickets):
            end = ends[ticket.id].ticket
            assert end is not None
            self.assertEqual((end.state, end.result), (S.SUCCEEDED, f"n{i}".encode()))
        self.assertEqual(list(errors), [unknown])
        self.assertIsInstance(errors[unknown], asyncgate.NotFound)
        self.assertEqual(results.pending, 0)

    async def test_a_removed_ticket_yields_nothing_more(self) -> None:
        queue = unique_queue("results-remove")
        kept, dropped = await self.client.submit_many([asyncgate.Submit(queue, b"a"), asyncgate.Submit(queue, b"b")])
        results = self.client.results([kept.id, dropped.id])
        self.addAsyncCleanup(results.aclose)
        results.remove(dropped.id)
        self.assertNotIn(dropped.id, results)
        await self.echo_worker(queue)
        events = [event async for event in results]
        self.assertEqual([e.ticket_id for e in events], [kept.id])
        # The dropped one ran all the same.
        self.assertEqual((await self.client.get(dropped.id, wait=20)).state, S.SUCCEEDED)

    async def test_every_event_of_many_tickets_resumes_without_gap_or_duplicate(self) -> None:
        queue = unique_queue("results-resume")
        first_half, second_half = asyncio.Event(), asyncio.Event()
        halfway: set[str] = set()
        worker = self.worker(max_in_flight=4)

        @worker.handler(queue)
        async def chunks(task: asyncgate.TaskContext) -> str:
            for i in range(3):
                await task.output(f"{task.data}-{i}")
            halfway.add(task.ticket_id)
            if len(halfway) == 3:
                first_half.set()
            await second_half.wait()
            for i in range(3, 6):
                await task.output(f"{task.data}-{i}")
            return f"{task.data}-done"

        await self.start(worker)
        proxy = Proxy(self.url)
        self.addAsyncCleanup(proxy.close)
        watcher = asyncgate.Client(
            await proxy.start(), resume=asyncgate.ResumeOptions(min_backoff=0.05, max_backoff=0.2)
        )
        self.addAsyncCleanup(watcher.close)
        tickets = await self.client.submit_many([asyncgate.Submit(queue, name) for name in ("a", "b", "c")])
        names = {t.id: name for t, name in zip(tickets, ("a", "b", "c"))}
        outputs: dict[str, list[str]] = {t.id: [] for t in tickets}
        seqs: dict[str, list[int]] = {t.id: [] for t in tickets}
        ends: dict[str, asyncgate.Ticket] = {}
        results = watcher.results(terminal_only=False)
        self.addAsyncCleanup(results.aclose)
        for ticket in tickets:
            results.add(ticket.id, after_seq=0)  # every chunk, those sent before too
        broken = False

        async def follow() -> None:
            nonlocal broken
            async for event in results:
                if event.kind != K.SNAPSHOT:
                    seqs[event.ticket_id].append(event.seq)
                if event.kind == K.OUTPUT:
                    outputs[event.ticket_id].append(event.output)
                if event.terminal and event.kind != K.SNAPSHOT:
                    assert event.ticket is not None
                    ends[event.ticket_id] = event.ticket
                if not broken and all(len(o) >= 3 for o in outputs.values()):
                    await first_half.wait()
                    broken = True
                    proxy.break_connections()
                    # The rest is produced while the stream is down: replayed after each resumed snapshot.
                    second_half.set()

        await bounded(follow())
        self.assertTrue(broken)
        self.assertGreaterEqual(proxy.accepted, 2, "the stream was reopened")
        for id, name in names.items():
            self.assertEqual(outputs[id], [f"{name}-{i}" for i in range(6)])
            self.assertEqual(seqs[id], sorted(set(seqs[id])), "in order, no duplicate")
            self.assertEqual((ends[id].state, ends[id].result), (S.SUCCEEDED, f"{name}-done"))


class DirectStreamsTest(GatewayTestCase):
    """The SDK's own HTTP/2 transport under load it must push back on, and the grpcio path it replaces."""

    async def test_large_bodies_cross_the_flow_control_windows_both_ways(self) -> None:
        # 30 x 300 KiB = 9 MiB each way: past the gateway's windows for the
        # submits and results, and past ours (4 MiB) for the tasks and events.
        queue = unique_queue("large")
        worker = self.worker(max_in_flight=8)

        @worker.handler(queue, inline=True)
        def echo(task: asyncgate.TaskContext) -> asyncgate.PayloadLike:
            return task.payload

        await self.start(worker)
        bodies = [bytes([i]) * (300 * 1024) for i in range(30)]
        tickets = await bounded(self.client.submit_many([asyncgate.Submit(queue, body) for body in bodies], in_flight=30))
        results = {}
        async with self.client.results(t.id for t in tickets) as stream:
            async for event in stream:
                assert event.ticket is not None
                results[event.ticket_id] = event.ticket.result
        self.assertEqual([results[t.id] for t in tickets], bodies)

    async def test_the_grpcio_path_does_the_same(self) -> None:
        queue = unique_queue("grpcio")
        client = asyncgate.Client(self.url, direct_streams=False)
        self.addAsyncCleanup(client.close)
        worker = self.worker(max_in_flight=4, direct_streams=False)

        @worker.handler(queue)
        async def echo(task: asyncgate.TaskContext) -> object:
            await task.progress(50, "half")
            return task.data

        await self.start(worker)
        tickets = await bounded(client.submit_many([asyncgate.Submit(queue, i) for i in range(20)], in_flight=4))
        ends: dict[str, object] = {}
        async with client.results(t.id for t in tickets) as stream:
            async for event in stream:
                assert event.ticket is not None
                ends[event.ticket_id] = event.ticket.result
        self.assertEqual([ends[t.id] for t in tickets], list(range(20)))
        self.assertGreater(worker.stats["tasks"], 0)


class AdminTest(GatewayTestCase):
    async def test_queues_pause_resume_limits_and_purge(self) -> None:
        admin = self.client.admin
        queue = unique_queue("admin")
        first = await self.client.submit(queue, "x")
        names = [q.name for q in await admin.list_queues()]
        self.assertIn(queue, names)
        info = await admin.get_queue(queue)
        self.assertEqual((info.name, info.counts.pending), (queue, 1))
        with self.assertRaises(asyncgate.NotFound):
            await admin.get_queue(unique_queue("never-used"))

        paused = await admin.pause_queue(queue, "maintenance")
        self.assertEqual(paused.pause.reason, "maintenance")
        self.assertIn("paus", (await self.client.get(first.id)).waiting_reason.lower())
        resumed = await admin.resume_queue(queue)
        self.assertFalse(resumed.HasField("pause"))

        limited = await admin.set_queue_limits(queue, max_dispatch_per_second=50, max_concurrent=2)
        self.assertEqual((limited.limits.max_dispatch_per_second, limited.limits.max_concurrent), (50, 2))
        cleared = await admin.set_queue_limits(queue)
        self.assertEqual(cleared.limits.max_concurrent, 0)

        await self.client.submit(queue, "y")
        self.assertEqual(await admin.purge_queue(queue), 2)
        self.assertEqual((await self.client.get(first.id)).state, S.CANCELLED)
        self.assertEqual(await admin.purge_queue(queue, [S.PENDING], created_before=dt.datetime.now(dt.timezone.utc)), 0)

    async def test_workers_retry_and_delete(self) -> None:
        admin = self.client.admin
        queue = unique_queue("admin-workers")
        worker = self.worker(max_in_flight=3)
        fail = True

        @worker.handler(queue)
        async def flaky(task: asyncgate.TaskContext) -> str:
            if fail:
                raise asyncgate.Permanent("not today")
            return "fine"

        await self.start(worker)
        sessions = await admin.list_workers(queue)
        self.assertEqual([(w.session_id, w.worker_name, w.max_in_flight) for w in sessions], [(worker.session_id, worker.name, 3)])
        self.assertEqual(await admin.list_workers(unique_queue("nobody")), [])

        ticket = await self.client.submit(queue, "x")
        self.assertEqual((await bounded(self.client.get(ticket.id, wait=20))).state, S.FAILED)
        fail = False
        retried = await admin.retry_ticket(ticket.id)
        self.assertEqual((retried.id, retried.state), (ticket.id, S.PENDING))
        self.assertEqual((await bounded(self.client.get(ticket.id, wait=20))).result, "fine")
        with self.assertRaises(asyncgate.FailedPrecondition):
            await admin.retry_ticket(ticket.id)  # SUCCEEDED: not retried

        fail = True
        again = await self.client.submit(queue, "y")
        self.assertEqual((await bounded(self.client.get(again.id, wait=20))).state, S.FAILED)
        fail = False
        self.assertEqual(await admin.retry_tickets(queue), 1)
        self.assertEqual((await bounded(self.client.get(again.id, wait=20))).state, S.SUCCEEDED)

        deleted = await admin.delete_ticket(ticket.id)
        self.assertLess(abs((deleted - dt.datetime.now(dt.timezone.utc)).total_seconds()), 60)
        with self.assertRaises(asyncgate.NotFound):
            await self.client.get(ticket.id)

        drained = await admin.drain_worker(worker.session_id)
        self.assertTrue(drained.draining)
        await bounded(worker.wait_draining())
