#!/usr/bin/env python3
"""End-to-end throughput of the Python SDK against a running gateway, with CPU per ticket.

    python3 sdk/python/bench.py http://127.0.0.1:50051 [--tickets 20000] [--in-flight 64] [--size 1024]
        [--modes sdk-submit,...] [--handler async|inline] [--verbose]

Each mode runs one producer process and one worker process (multiprocessing,
spawn), each on its own fresh queue:

- `sdk-submit`: the producer calls `Client.submit_many(..., in_flight=64)`
  (one SubmitStream on the SDK's own HTTP/2 connection); the end is the
  worker's last recorded result (ResultAck OK). The producer learns that each
  ticket is stored, not its result.
- `sdk-results`: `sdk-submit` plus the results: the producer submits in
  chunks of 1,024 (`submit_many`) and follows every ticket on one
  `Client.results()` stream (`WatchTickets`, terminal_only); the end is the
  producer's last result received.
- `sdk-submit-grpcio`: `sdk-submit` with `direct_streams=False` in the
  producer and the worker: the SDK's streams on grpcio, for comparison.
- `sdk-execute`: the producer runs 64 concurrent `Client.execute(...)`
  calls (one Execute stream per ticket, read to its terminal event).
- `grpc-execute`: the per-call path of `examples/python/client.py`: plain
  synchronous grpcio, one `Gateway/Execute` per ticket read to its end, 64
  threads. No SDK on the producer side.

The worker is the SDK's `Worker` (max_in_flight = --in-flight) echoing the
binary payload in every mode: an `async def` handler (`--handler async`, the
default) or a plain function run inline (`--handler inline`). Before timing,
each producer sends --in-flight tickets to warm up (connections, the
worker's first session). Timing starts after the warm-up and ends when the
last ticket is done (CLOCK_MONOTONIC, shared by the processes on Linux);
CPU is `time.process_time()` of each process (all its threads, grpc's
included) over the same span, divided by the tickets.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("sdk-submit", "sdk-results", "sdk-submit-grpcio", "sdk-execute", "grpc-execute")
#: Tickets per submit_many call in sdk-results (its results are followed while the next chunk goes).
CHUNK = 1024


# -- the worker process ---------------------------------------------------------


def worker_main(
    url: str, queue: str, warmup: int, tickets: int, in_flight: int, handler: str, direct: bool, conn: Connection
) -> None:
    asyncio.run(_worker(url, queue, warmup, tickets, in_flight, handler, direct, conn))


async def _worker(
    url: str, queue: str, warmup: int, tickets: int, in_flight: int, handler: str, direct: bool, conn: Connection
) -> None:
    import asyncgate
    from asyncgate import workers_pb2

    finished = asyncio.Event()
    marks: dict[str, float] = {}

    class Counting(asyncgate.Worker):
        """Counts the results the gateway recorded; marks the warm-up's end and the last one."""

        recorded = 0

        def _acknowledged(self, ack: workers_pb2.ResultAck) -> None:
            super()._acknowledged(ack)
            if ack.code == 0:
                self.recorded += 1
                if self.recorded == warmup:
                    marks["cpu0"] = time.process_time()
                if self.recorded == warmup + tickets:
                    marks["end"] = time.monotonic()
                    marks["cpu1"] = time.process_time()
                    finished.set()

    worker = Counting(url, max_in_flight=in_flight, name="bench-worker", direct_streams=direct)
    if handler == "inline":

        @worker.handler(queue, inline=True)
        def echo_inline(task: asyncgate.TaskContext) -> Any:
            return task.payload

    else:

        @worker.handler(queue)
        async def echo(task: asyncgate.TaskContext) -> Any:
            return task.payload

    running = asyncio.create_task(worker.run(handle_signals=False))
    await worker.wait_connected()
    conn.send("ready")
    await finished.wait()
    worker.stop()
    await running
    conn.send({"end": marks["end"], "cpu": marks["cpu1"] - marks["cpu0"], "stats": worker.stats})


# -- the producer processes -----------------------------------------------------


def producer_main(
    url: str, queue: str, mode: str, warmup: int, tickets: int, in_flight: int, size: int, conn: Connection
) -> None:
    body = os.urandom(size)
    if mode == "grpc-execute":
        result = _grpc_execute(url, queue, warmup, tickets, in_flight, body)
    else:
        result = asyncio.run(_sdk(url, queue, mode, warmup, tickets, in_flight, body))
    conn.send(result)


async def _sdk(url: str, queue: str, mode: str, warmup: int, tickets: int, in_flight: int, body: bytes) -> dict[str, float]:
    import asyncgate

    async with asyncgate.Client(url, direct_streams=mode != "sdk-submit-grpcio") as client:

        async def submit(n: int) -> None:
            await client.submit_many([asyncgate.Submit(queue, body) for _ in range(n)], in_flight=in_flight)

        async def with_results(n: int) -> None:
            """Chunks of submits, each chunk's tickets followed on one results stream as soon as stored."""
            results = client.results()
            added = asyncio.Event()
            received = 0

            async def produce() -> None:
                for start in range(0, n, CHUNK):
                    stored = await client.submit_many(
                        [asyncgate.Submit(queue, body) for _ in range(min(CHUNK, n - start))], in_flight=in_flight
                    )
                    results.add_many(ticket.id for ticket in stored)
                    added.set()

            producer = asyncio.create_task(produce())
            try:
                while received < n:
                    event = await results.next()
                    if event is None:  # nothing followed right now: wait for the next chunk
                        added.clear()
                        await added.wait()
                        continue
                    if event.error is not None or event.ticket is None or event.ticket.state != asyncgate.TicketState.SUCCEEDED:
                        raise RuntimeError(f"ticket {event.ticket_id} did not succeed: {event!r}")
                    received += 1
                await producer
            finally:
                producer.cancel()
                await results.aclose()

        async def execute(n: int) -> None:
            slots = asyncio.Semaphore(in_flight)

            async def one() -> None:
                async with slots:
                    ticket = await client.execute(queue, body)
                    if ticket.state != asyncgate.TicketState.SUCCEEDED:
                        raise RuntimeError(f"ticket {ticket.id} {ticket.state.name}")

            await asyncio.gather(*(one() for _ in range(n)))

        batch = {"sdk-results": with_results, "sdk-execute": execute}.get(mode, submit)
        await batch(warmup)
        start, cpu0 = time.monotonic(), time.process_time()
        await batch(tickets)
        return {"start": start, "end": time.monotonic(), "cpu": time.process_time() - cpu0}


def _grpc_execute(url: str, queue: str, warmup: int, tickets: int, in_flight: int, body: bytes) -> dict[str, float]:
    """Like examples/python/client.py --execute, with `in_flight` threads."""
    import grpc

    from asyncgate._proto.v1 import gateway_pb2, gateway_pb2_grpc, ticket_pb2

    target = url.split("://", 1)[-1]
    with grpc.insecure_channel(target) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        request = gateway_pb2.SubmitRequest(queue=queue, payload=ticket_pb2.Payload(binary=body))

        def one(_: int) -> None:
            last = None
            for event in gateway.Execute(request, timeout=120):
                if event.kind != ticket_pb2.TICKET_EVENT_KIND_KEEPALIVE:
                    last = event.ticket
            if last is None or last.state != ticket_pb2.TICKET_STATE_SUCCEEDED:
                raise RuntimeError(f"ticket not succeeded: {last}")

        with ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(one, range(warmup)))
            start, cpu0 = time.monotonic(), time.process_time()
            list(pool.map(one, range(tickets)))
            return {"start": start, "end": time.monotonic(), "cpu": time.process_time() - cpu0}


# -- the parent ------------------------------------------------------------------


def run_mode(ctx: Any, url: str, mode: str, tickets: int, in_flight: int, size: int, handler: str) -> dict[str, Any]:
    queue = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
    warmup = in_flight
    direct = mode != "sdk-submit-grpcio"
    worker_end, worker_conn = ctx.Pipe()
    producer_end, producer_conn = ctx.Pipe()
    worker = ctx.Process(
        target=worker_main, args=(url, queue, warmup, tickets, in_flight, handler, direct, worker_conn)
    )
    worker.start()
    try:
        if not worker_end.poll(30) or worker_end.recv() != "ready":
            raise SystemExit(f"{mode}: the worker did not connect")
        producer = ctx.Process(
            target=producer_main, args=(url, queue, mode, warmup, tickets, in_flight, size, producer_conn)
        )
        producer.start()
        budget = 60 + tickets / 50  # seconds: far above any plausible run
        if not producer_end.poll(budget):
            producer.kill()
            raise SystemExit(f"{mode}: the producer did not finish")
        produced = producer_end.recv()
        producer.join()
        if not worker_end.poll(budget):
            raise SystemExit(f"{mode}: the worker did not see every result")
        served = worker_end.recv()
        worker.join(30)
    finally:
        if worker.is_alive():
            worker.kill()
    elapsed = max(produced["end"], served["end"]) - produced["start"]
    return {
        "tickets_per_s": tickets / elapsed,
        "seconds": elapsed,
        "producer_us": produced["cpu"] / tickets * 1e6,
        "worker_us": served["cpu"] / tickets * 1e6,
        "stats": served.get("stats"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the gateway, e.g. http://127.0.0.1:50051")
    parser.add_argument("--tickets", type=int, default=20000, help="timed tickets per mode (default: %(default)s)")
    parser.add_argument("--in-flight", type=int, default=64, help="concurrency of producer and worker (default: %(default)s)")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of %s" % ", ".join(MODES))
    parser.add_argument(
        "--handler", choices=("async", "inline"), default="async", help="the worker's echo handler (default: %(default)s)"
    )
    parser.add_argument("--verbose", action="store_true", help="also print the worker's message counters")
    args = parser.parse_args()
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
    ctx = mp.get_context("spawn")
    print(
        f"{args.tickets} tickets per mode, {args.size} B payloads, {args.in_flight} in flight, "
        f"{args.handler} handler, gateway {args.url}"
    )
    print(f"{'mode':<18} {'tickets/s':>10} {'seconds':>8} {'producer CPU/ticket':>20} {'worker CPU/ticket':>18}")
    rates: dict[str, float] = {}
    for mode in modes:
        r = run_mode(ctx, args.url, mode, args.tickets, args.in_flight, args.size, args.handler)
        rates[mode] = r["tickets_per_s"]
        print(
            f"{mode:<18} {r['tickets_per_s']:>10.0f} {r['seconds']:>8.2f} "
            f"{r['producer_us']:>17.0f} us {r['worker_us']:>15.0f} us",
            flush=True,
        )
        if args.verbose:
            print(f"  worker traffic: {r['stats']}", flush=True)
    if "grpc-execute" in rates:
        base = rates["grpc-execute"]
        ratios = ", ".join(f"{mode} {rate / base:.1f}x" for mode, rate in rates.items() if mode != "grpc-execute")
        print(f"against grpc-execute: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
