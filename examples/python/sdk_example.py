#!/usr/bin/env python3
"""Asyncgate from Python with the SDK (`sdk/python`): a worker and a producer.

    python3 sdk_example.py [--url http://127.0.0.1:50051] [--queue upper] TEXT...

The worker (`asyncgate.Worker`) upper-cases text on QUEUE. The producer
submits every TEXT on one SubmitStream (`Client.submit_many`: one message
per ticket, answered once stored), then follows them all on one WatchTickets
stream (`Client.results()`), printing `result <id> <STATE> <result>` as each
ends. It exits 0 when every ticket SUCCEEDED. Heartbeats, reconnects with
backoff, resumed streams and typed errors are the SDK's; compare `worker.py`
and `client.py`, which do the same by hand with grpcio alone.

Needs the SDK importable: `python3 -m pip install ../../sdk/python`, or
`python3 ../../sdk/python/generate.py` and `PYTHONPATH=../../sdk/python`.
`ASYNCGATE_API_KEY`, when set, is sent by both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import asyncgate


async def run(url: str, queue: str, texts: list[str]) -> int:
    key = os.environ.get("ASYNCGATE_API_KEY") or None
    worker = asyncgate.Worker(url, api_key=key, max_in_flight=16)

    @worker.handler(queue)
    async def upper(task: asyncgate.TaskContext) -> str:
        await task.progress(50, "upper-casing")
        if not isinstance(task.data, str):
            raise asyncgate.Permanent("expected text")
        return task.data.upper()

    serving = asyncio.create_task(worker.run(handle_signals=False))
    failed = 0
    try:
        async with asyncgate.Client(url, api_key=key) as client:
            tickets = await client.submit_many([asyncgate.Submit(queue, text) for text in texts])
            async with client.results() as results:
                results.add_many(ticket.id for ticket in tickets)
                async for event in results:
                    if event.error is not None:
                        print(f"result {event.ticket_id} ERROR {event.error}")
                        failed += 1
                        continue
                    ticket = event.ticket
                    outcome = ticket.result if ticket.error is None else ticket.error.message
                    print(f"result {ticket.id} {ticket.state.name} {outcome}")
                    failed += ticket.state != asyncgate.TicketState.SUCCEEDED
    finally:
        worker.stop()
        await serving
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:50051")
    parser.add_argument("--queue", default="upper")
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.url, args.queue, args.texts)))


if __name__ == "__main__":
    main()
