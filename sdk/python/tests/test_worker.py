"""`Worker` against a real gateway: progress and output, cancellation, retries, failures, capacity, reconnects, drain."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import grpc

import asyncgate
from asyncgate import workers_pb2
from support import PATIENCE, GatewayTestCase, Proxy, bounded, unique_queue

S, K = asyncgate.TicketState, asyncgate.EventKind


class WorkerTest(GatewayTestCase):
    async def test_progress_and_output_reach_a_watcher(self) -> None:
        queue = unique_queue("progress")
        release = asyncio.Event()
        worker = self.worker(max_in_flight=1)

        @worker.handler(queue)
        async def work(task: asyncgate.TaskContext) -> dict[str, object]:
            await release.wait()
            await task.progress(30, "thinking")
            await task.output(b"part one ")
            await task.output({"part": 2}, percent=60, message="halfway")
            return {"echo": task.data, "attempt": task.attempt, "meta": task.metadata}

        await self.start(worker)
        ticket = await self.client.submit(queue, "in", metadata={"k": "v"})
        events: list[asyncgate.Event] = []

        async def follow() -> None:
            async for event in self.client.watch(ticket.id):
                events.append(event)
                # Released only once the watch is open, so every event is live.
                release.set()

        await bounded(follow())
        progress = [e.ticket.progress for e in events if e.kind == K.PROGRESS and e.ticket]
        self.assertIn(asyncgate.Progress(30, "thinking"), progress)
        outputs = [e.output for e in events if e.kind == K.OUTPUT]
        self.assertEqual(outputs, [b"part one ", {"part": 2}])
        last = events[-1].ticket
        assert last is not None
        self.assertEqual(last.state, S.SUCCEEDED)
        self.assertEqual(last.result, {"echo": "in", "attempt": 1, "meta": {"k": "v"}})

    async def test_heartbeats_keep_a_long_task_leased(self) -> None:
        queue = unique_queue("heartbeat")
        started, release = asyncio.Event(), asyncio.Event()
        worker = self.worker(max_in_flight=1)

        @worker.handler(queue)
        async def long(task: asyncgate.TaskContext) -> int:
            started.set()
            await release.wait()
            return task.attempt

        await self.start(worker)
        if worker.heartbeat_interval > 1.0:
            self.skipTest("needs a gateway with a short --heartbeat-interval")
        ticket = await self.client.submit(queue, "x")
        await bounded(started.wait())
        # The gateway's long-poll is the clock: five heartbeat intervals, far
        # past the two unanswered pings that would cost the lease.
        meanwhile = await bounded(self.client.get(ticket.id, wait=5 * worker.heartbeat_interval))
        self.assertEqual((meanwhile.state, meanwhile.attempt), (S.RUNNING, 1))
        self.assertEqual(meanwhile.proto.waiting_reason.worker_name, worker.name)
        release.set()
        done = await bounded(self.client.get(ticket.id, wait=20))
        self.assertEqual((done.state, done.result, done.attempt), (S.SUCCEEDED, 1, 1))

    async def test_cancel_reaches_the_handler_as_asyncio_cancellation(self) -> None:
        queue = unique_queue("cancel")
        started, cancelled = asyncio.Event(), asyncio.Event()
        reasons: list[object] = []
        worker = self.worker(max_in_flight=1)

        @worker.handler(queue)
        async def forever(task: asyncgate.TaskContext) -> str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                reasons.append(task.cancel_reason)
                cancelled.set()
                raise
            return "never"

        await self.start(worker)
        ticket = await self.client.submit(queue, "x")
        await bounded(started.wait())
        answer = await self.client.cancel(ticket.id, "stop it")
        self.assertEqual(answer.state, S.CANCELLED)
        await bounded(cancelled.wait())
        self.assertEqual(reasons[0][0], workers_pb2.CANCEL_REASON_CANCELLED)  # type: ignore[index]
        final = await self.client.get(ticket.id)
        self.assertEqual(final.state, S.CANCELLED)
        # The worker stays usable: its slot came back.
        started.clear()
        self.assertEqual(worker.in_flight, 0)

    async def test_a_failing_handler_is_retried_then_succeeds(self) -> None:
        queue = unique_queue("retry")
        worker = self.worker()

        class Flaky:
            """A class-based handler."""

            def __init__(self) -> None:
                self.attempts: list[int] = []

            async def handle(self, task: asyncgate.TaskContext) -> str:
                self.attempts.append(task.attempt)
                if task.attempt == 1:
                    raise RuntimeError("flaky dependency")
                return f"ok on attempt {task.attempt}"

        flaky = Flaky()
        worker.register(queue, flaky)
        await self.start(worker)
        ticket = await self.client.submit(queue, "x", max_attempts=3)
        done = await bounded(self.client.get(ticket.id, wait=20))
        self.assertEqual(done.state, S.SUCCEEDED, done.error)
        self.assertEqual((done.attempt, done.result), (2, "ok on attempt 2"))
        self.assertEqual(flaky.attempts, [1, 2])

    async def test_exhausted_attempts_fail_with_the_last_error(self) -> None:
        queue = unique_queue("exhaust")
        worker = self.worker()

        @worker.handler(queue)
        async def always(task: asyncgate.TaskContext) -> None:
            raise asyncgate.TaskError(f"busy #{task.attempt}", code=grpc.StatusCode.RESOURCE_EXHAUSTED)

        await self.start(worker)
        ticket = await self.client.submit(queue, "x", max_attempts=2)
        done = await bounded(self.client.get(ticket.id, wait=20))
        self.assertEqual((done.state, done.attempt), (S.FAILED, 2))
        assert done.error is not None
        self.assertEqual(done.error.code, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        self.assertTrue(done.error.message.startswith("busy #2"), done.error.message)

    async def test_a_permanent_failure_is_not_retried(self) -> None:
        queue = unique_queue("permanent")
        worker = self.worker()

        @worker.handler(queue)
        def sync_handler(task: asyncgate.TaskContext) -> None:  # a plain function runs in a thread
            raise asyncgate.Permanent(f"cannot parse {task.data!r}", code=grpc.StatusCode.INVALID_ARGUMENT)

        await self.start(worker)
        ticket = await self.client.submit(queue, "garbage", max_attempts=5)
        done = await bounded(self.client.get(ticket.id, wait=20))
        self.assertEqual((done.state, done.attempt), (S.FAILED, 1))
        self.assertEqual(
            done.error, asyncgate.TicketError(grpc.StatusCode.INVALID_ARGUMENT.value[0], "cannot parse 'garbage'", False)
        )

    async def test_max_in_flight_is_respected(self) -> None:
        queue = unique_queue("capacity")
        gate, two_running = asyncio.Event(), asyncio.Event()
        running = peak = 0
        worker = self.worker(max_in_flight=2)

        @worker.handler(queue)
        async def slow(task: asyncgate.TaskContext) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running == 2:
                two_running.set()
            try:
                await gate.wait()
            finally:
                running -= 1
            return task.data

        await self.start(worker)
        tickets = await self.client.submit_many([asyncgate.Submit(queue, i) for i in range(6)])
        await bounded(two_running.wait())
        busy = await self.client.list(queue=queue, states=[S.RUNNING])
        waiting = await self.client.list(queue=queue, states=[S.PENDING])
        self.assertEqual((len(busy.tickets), len(waiting.tickets)), (2, 4))
        self.assertEqual(worker.in_flight, 2)
        gate.set()
        results = [await bounded(self.client.get(t.id, wait=20)) for t in tickets]
        self.assertEqual([r.result for r in results], list(range(6)))
        self.assertEqual(peak, 2)

    async def test_a_worker_reconnects_after_its_connection_breaks(self) -> None:
        queue = unique_queue("reconnect")
        proxy = Proxy(self.url)
        self.addAsyncCleanup(proxy.close)
        worker = self.worker(await proxy.start(), max_in_flight=2)

        @worker.handler(queue)
        async def echo(task: asyncgate.TaskContext) -> object:
            return task.data

        await self.start(worker)
        first = worker.session_id
        self.assertEqual((await bounded(self.client.execute(queue, "before"))).result, "before")
        proxy.break_connections()
        second = await bounded(worker.wait_connected(other_than=first))
        self.assertNotEqual(first, second)
        self.assertEqual((await bounded(self.client.execute(queue, "after"))).result, "after")
        self.assertGreaterEqual(proxy.accepted, 2)

    async def test_stop_drains_finishing_the_running_task(self) -> None:
        queue = unique_queue("drain")
        started, release = asyncio.Event(), asyncio.Event()
        worker = self.worker(max_in_flight=4)

        @worker.handler(queue)
        async def slow(task: asyncgate.TaskContext) -> str:
            started.set()
            await release.wait()
            return "finished"

        running = await self.start(worker)
        ticket = await self.client.submit(queue, "x")
        await bounded(started.wait())
        worker.stop()
        # Only once the gateway confirmed the drain is "no new task" certain.
        await bounded(worker.wait_draining())
        late = await self.client.submit(queue, "late")
        release.set()
        await bounded(running)
        done = await self.client.get(ticket.id)
        self.assertEqual((done.state, done.result), (S.SUCCEEDED, "finished"))
        self.assertEqual((await self.client.get(late.id)).state, S.PENDING, "no new task after the stop")

    async def test_a_drain_from_the_gateway_finishes_the_task_then_stops_the_worker(self) -> None:
        from asyncgate._proto.v1 import admin_pb2, admin_pb2_grpc

        queue = unique_queue("admin-drain")
        started, release = asyncio.Event(), asyncio.Event()
        worker = self.worker(max_in_flight=2)

        @worker.handler(queue)
        async def slow(task: asyncgate.TaskContext) -> str:
            started.set()
            await release.wait()
            return "finished"

        running = await self.start(worker)
        ticket = await self.client.submit(queue, "x")
        await bounded(started.wait())
        async with grpc.aio.insecure_channel(self.url.removeprefix("http://")) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            await admin.DrainWorker(admin_pb2.DrainWorkerRequest(session_id=worker.session_id), timeout=PATIENCE)
        await bounded(worker.wait_draining())
        late = await self.client.submit(queue, "late")
        release.set()
        await bounded(running)  # Drain{stop}: no reconnect
        done = await self.client.get(ticket.id)
        self.assertEqual((done.state, done.result), (S.SUCCEEDED, "finished"))
        self.assertEqual((await self.client.get(late.id)).state, S.PENDING)

    async def test_sigterm_drains_a_worker_process(self) -> None:
        queue = unique_queue("sigterm")
        script = textwrap.dedent(
            f"""
            import asyncio, logging, sys
            import asyncgate

            async def main():
                worker = asyncgate.Worker({self.url!r}, max_in_flight=2, reconnect_backoff=(0.02, 0.2))

                @worker.handler({queue!r})
                async def handle(task):
                    await task.progress(10, "started")
                    line = await asyncio.to_thread(sys.stdin.readline)
                    return line.strip()

                await worker.run()

            logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
            asyncio.run(main())
            """
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(asyncgate.__file__).parents[1]), os.environ.get("PYTHONPATH")])))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        assert child.stdin is not None and child.stderr is not None
        log: list[str] = []

        async def until(text: str) -> None:
            assert child.stderr is not None
            try:
                while line := (await bounded(child.stderr.readline())).decode():
                    log.append(line)
                    if text in line:
                        return
            except asyncio.TimeoutError:
                self.fail(f"the worker did not log {text!r} in time:\n{''.join(log)}")
            self.fail(f"the worker exited before logging {text!r}:\n{''.join(log)}")

        try:
            ticket = await self.client.submit(queue, "x")

            async def started() -> None:
                async for event in self.client.watch(ticket.id, after_seq=0):
                    if event.kind == K.PROGRESS:
                        return

            await bounded(started())
            child.send_signal(signal.SIGTERM)
            await bounded(until("stopping"))
            # The gateway's answer to the worker's Drain: no new task from here on.
            await bounded(until("draining"))
            late = await self.client.submit(queue, "late")
            child.stdin.write(b"delivered after SIGTERM\n")
            await child.stdin.drain()
            await bounded(until("stopped"))
            self.assertEqual(await bounded(child.wait()), 0, "".join(log))
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        done = await self.client.get(ticket.id)
        self.assertEqual((done.state, done.result), (S.SUCCEEDED, "delivered after SIGTERM"), "".join(log))
        self.assertEqual((await self.client.get(late.id)).state, S.PENDING)
