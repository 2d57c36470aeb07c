"""`Client.schedules` and `Client.submit_batch` against a real gateway."""

from __future__ import annotations

import asyncio
import datetime as _dt
import uuid

import asyncgate
from support import GatewayTestCase, bounded, unique_queue

S = asyncgate.TicketState


class SchedulesTest(GatewayTestCase):
    async def test_an_every_second_schedule_submits_tickets_a_worker_runs(self) -> None:
        queue = unique_queue("sched")
        ran: asyncio.Queue[str] = asyncio.Queue()
        worker = self.worker(max_in_flight=4)

        @worker.handler(queue)
        async def record(task: asyncgate.TaskContext) -> str:
            await ran.put(task.ticket_id)
            return "ok"

        await self.start(worker)
        schedules = self.client.schedules
        ticket = asyncgate.Submit(queue, "tick").to_proto()
        sid = f"every-{uuid.uuid4().hex[:8]}"
        created = await schedules.create(schedules.every(sid, 1, ticket, overlap="allow"))
        self.assertEqual(len(created.next_fire_times), 5)
        first = await bounded(ran.get())
        done = await bounded(self.client.get(first, wait=20))
        self.assertEqual(done.state, S.SUCCEEDED)
        self.assertEqual(done.metadata["asyncgate.schedule"], sid)
        paused = await schedules.pause(sid, "enough")
        self.assertTrue(paused.paused)
        self.assertIn(sid, [s.id for s in await schedules.list()])
        await schedules.delete(sid)
        with self.assertRaises(asyncgate.NotFound):
            await schedules.get(sid)

    async def test_cron_backfill_and_bad_input(self) -> None:
        queue = unique_queue("cron")
        schedules = self.client.schedules
        sid = f"nightly-{uuid.uuid4().hex[:8]}"
        ticket = asyncgate.Submit(queue, {"n": 1}).to_proto()
        await schedules.create(schedules.cron(sid, "30 2 * * *", ticket, time_zone="America/New_York"))
        start = _dt.datetime(2026, 11, 1, tzinfo=_dt.timezone.utc)
        filled = await schedules.backfill(sid, start, start + _dt.timedelta(days=2) - _dt.timedelta(seconds=1))
        self.assertEqual(len(filled), 2)
        again = await schedules.backfill(sid, start, start + _dt.timedelta(days=2) - _dt.timedelta(seconds=1))
        self.assertEqual([t.id for t in again], [t.id for t in filled], "a slot never gets a second ticket")
        with self.assertRaises(asyncgate.InvalidArgument) as refused:
            await schedules.create(schedules.cron("bad", "0 25 * * *", ticket))
        self.assertIn("field 2 (hour)", str(refused.exception))
        with self.assertRaises(asyncgate.AlreadyExists):
            await schedules.create(schedules.cron(sid, "0 3 * * *", ticket))

    async def test_submit_batch_answers_each_request_in_order(self) -> None:
        queue = unique_queue("batch")
        requests = [asyncgate.Submit(queue, i) for i in range(3)]
        requests.insert(1, asyncgate.Submit(queue, "too high", priority=5000))
        results = await self.client.submit_batch(requests)
        self.assertIsInstance(results[0], asyncgate.Ticket)
        self.assertIsInstance(results[1], asyncgate.InvalidArgument)
        self.assertIn("priority", str(results[1]))
        self.assertEqual([r.state for r in results if isinstance(r, asyncgate.Ticket)], [S.PENDING] * 3)
        with self.assertRaises(asyncgate.InvalidArgument):
            await self.client.submit_batch([])

