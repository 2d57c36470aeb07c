#!/usr/bin/env python3
"""An Asyncgate worker in Python: serves queues by upper-casing text.

It speaks the worker protocol of proto/asyncgate/v1/workers.proto on one
bidirectional `Workers/Connect` stream:

    worker:  Hello (queues, max_in_flight)   gateway: Welcome (heartbeat interval)
    gateway: Ping                            worker:  Heartbeat with the ping's nonce
    gateway: Task                            worker:  Progress*, then exactly one Result
    gateway: ResultAck (recorded: forget the result; UNAVAILABLE: send it again)
    gateway: Cancel (stop the task, still send a Result: it is discarded)
    gateway: Drain (finish in-flight tasks, then reconnect)

The gateway never has more than max_in_flight tasks outstanding at this
worker, so there is no credit bookkeeping here, and answering its pings is
what keeps the leases alive (two unanswered pings and the tasks go back to
the queue). On SIGINT/SIGTERM the worker sends Drain, delivers the results of
its in-flight tasks and exits; a second signal exits at once.

Run ./generate.sh first: it writes the stubs to gen/ (or put a directory of
stubs on PYTHONPATH).
"""

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

sys.path.append(str(Path(__file__).resolve().parent / "gen"))
from asyncgate.v1 import ticket_pb2, workers_pb2, workers_pb2_grpc  # noqa: E402

log = logging.getLogger("worker")

# ResultAck codes are in gRPC numbering.
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class TaskFailed(Exception):
    """A failure to report as the task's result."""

    def __init__(self, code: grpc.StatusCode, message: str, retryable: bool):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


async def handle(task: workers_pb2.Task, progress) -> ticket_pb2.Payload:
    """The work itself: upper-cases a JSON string or a binary body.

    Blocking work belongs in a thread: `await asyncio.to_thread(fn, ...)`.
    """
    await progress(50, "upper-casing")
    payload = task.payload
    if payload.WhichOneof("kind") == "binary":
        return ticket_pb2.Payload(binary=payload.binary.upper(), content_type=payload.content_type)
    if payload.json.WhichOneof("kind") == "string_value":
        text = payload.json.string_value.upper()
        return ticket_pb2.Payload(json=struct_pb2.Value(string_value=text))
    # Another attempt would fail the same way: not retryable.
    raise TaskFailed(grpc.StatusCode.INVALID_ARGUMENT, "expected text: a JSON string or a binary body", False)


def result(task: workers_pb2.Task, **outcome) -> workers_pb2.WorkerMessage:
    return workers_pb2.WorkerMessage(
        result=workers_pb2.TaskResult(ticket_id=task.ticket_id, lease_id=task.lease_id, **outcome)
    )


def failure(code: grpc.StatusCode, message: str, retryable: bool) -> workers_pb2.TaskFailure:
    return workers_pb2.TaskFailure(code=code.value[0], message=message, retryable=retryable)


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
        # Lease id -> the asyncio task running it.
        self.running: dict[str, asyncio.Task] = {}
        # Lease id -> its result, until a ResultAck says it is recorded. Kept
        # across reconnects: the gateway's lease check decides whether a
        # result sent again still counts.
        self.unacked: dict[str, workers_pb2.WorkerMessage] = {}
        # Messages to the gateway (the request stream); None ends it.
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.stopping = False

    def send(self, message: workers_pb2.WorkerMessage | None) -> None:
        self.outbox.put_nowait(message)

    def idle(self) -> bool:
        return not self.running and not self.unacked

    def stop(self) -> None:
        """On a signal: ask the gateway for no new tasks and finish the rest;
        on a second signal, exit at once (the gateway requeues what was left)."""
        if self.stopping:
            log.warning("second signal: exiting now")
            raise SystemExit(130)
        log.info("stopping: finishing %d in-flight task(s)", len(self.running))
        self.stopping = True
        self.send(workers_pb2.WorkerMessage(drain=workers_pb2.Drain(reason="the worker is stopping")))

    async def run(self) -> None:
        """Sessions until stopped, reconnecting with a growing delay."""
        delay = 0.5
        while not (self.stopping and self.idle()):
            try:
                if await self.session():
                    delay = 0.5
            except grpc.aio.AioRpcError as error:
                log.warning("connection lost: %s: %s", error.code().name, error.details())
            except asyncio.TimeoutError:
                log.warning("the gateway went silent; dropping the connection")
            except ConnectionError as error:
                log.warning("%s", error)
            if self.stopping and self.idle():
                return
            log.info("reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def session(self) -> bool:
        """One Connect stream, from Hello to its end; True if it got a Welcome."""
        self.outbox = outbox = asyncio.Queue()

        async def requests():
            while (message := await outbox.get()) is not None:
                yield message

        hello = workers_pb2.Hello(
            worker_name=self.args.name, queues=self.args.queue, max_in_flight=self.args.max_in_flight
        )
        self.send(workers_pb2.WorkerMessage(hello=hello))
        async with grpc.aio.insecure_channel(self.args.target) as channel:
            call = workers_pb2_grpc.WorkersStub(channel).Connect(requests(), metadata=self.metadata)
            first = await asyncio.wait_for(call.read(), timeout=10)
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise ConnectionError(f"expected Welcome, got {first}")
            welcome = first.welcome
            heartbeat = welcome.heartbeat_interval.ToTimedelta().total_seconds() or 10.0
            log.info("connected: session %s, queues %s", welcome.session_id, ",".join(self.args.queue))
            # Results a broken connection left unacknowledged go first.
            for message in self.unacked.values():
                self.send(message)
            if self.stopping:
                self.send(workers_pb2.WorkerMessage(drain=workers_pb2.Drain(reason="the worker is stopping")))

            draining = closed = False
            while True:
                # The gateway pings once per interval: silence means it is gone.
                message = await asyncio.wait_for(call.read(), timeout=3 * heartbeat)
                if message is grpc.aio.EOF:
                    log.info("the gateway closed the stream")
                    return True
                kind = message.WhichOneof("kind")
                if kind == "ping":
                    self.send(workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(nonce=message.ping.nonce)))
                elif kind == "task":
                    task = message.task
                    log.info("task %s (attempt %d)", task.ticket_id, task.attempt)
                    self.running[task.lease_id] = asyncio.create_task(self.run_task(task))
                elif kind == "cancel":
                    log.info("cancelled: %s (%s)", message.cancel.ticket_id, message.cancel.message)
                    if running := self.running.get(message.cancel.lease_id):
                        running.cancel()
                elif kind == "result_ack":
                    self.acknowledged(message.result_ack)
                elif kind == "drain":
                    # The gateway shuts down, or answers our Drain: no new
                    # tasks will come on this stream.
                    log.info("draining: %s", message.drain.reason)
                    draining = True
                if draining and self.idle() and not closed:
                    # Everything is delivered: end our side; the gateway ends its.
                    closed = True
                    self.send(None)

    async def run_task(self, task: workers_pb2.Task) -> None:
        async def progress(percent: int, message: str) -> None:
            self.send(
                workers_pb2.WorkerMessage(
                    progress=workers_pb2.TaskProgress(
                        ticket_id=task.ticket_id, lease_id=task.lease_id, percent=percent, message=message
                    )
                )
            )

        try:
            message = result(task, success=await handle(task, progress))
        except TaskFailed as error:
            message = result(task, failure=failure(error.code, str(error), error.retryable))
        except asyncio.CancelledError:
            # Cancelled by the gateway: a result is still due (it is discarded).
            message = result(task, failure=failure(grpc.StatusCode.CANCELLED, "cancelled", False))
        except Exception as error:  # a bug in the handler: another attempt may go better
            log.exception("task %s failed", task.ticket_id)
            message = result(task, failure=failure(grpc.StatusCode.INTERNAL, repr(error), True))
        del self.running[task.lease_id]
        self.unacked[task.lease_id] = message
        self.send(message)

    def acknowledged(self, ack: workers_pb2.ResultAck) -> None:
        code = CODE_NAMES.get(ack.code, str(ack.code))
        if code == "UNAVAILABLE" and ack.lease_id in self.unacked:
            # The gateway could not store it yet: keep it and try again shortly.
            message = self.unacked[ack.lease_id]
            asyncio.get_running_loop().call_later(1.0, self.send, message)
            return
        self.unacked.pop(ack.lease_id, None)
        if code in ("OK", "ALREADY_EXISTS"):
            log.info("result recorded: %s", ack.ticket_id)
        else:
            log.warning("result for %s not recorded: %s: %s", ack.ticket_id, code, ack.message)


async def main() -> None:
    parser = argparse.ArgumentParser(description="An Asyncgate worker that upper-cases text.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="the gateway, host:port (default: %(default)s)")
    parser.add_argument(
        "--api-key", default=os.environ.get("ASYNCGATE_API_KEY"), help="API key (default: $ASYNCGATE_API_KEY)"
    )
    parser.add_argument("--queue", action="append", help="a queue to serve (repeatable; default: upper)")
    parser.add_argument("--max-in-flight", type=int, default=4, help="tasks run at once (default: %(default)s)")
    parser.add_argument("--name", default=f"python-{socket.gethostname()}-{os.getpid()}", help="name in the logs")
    args = parser.parse_args()
    args.queue = args.queue or ["upper"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    worker = Worker(args)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, worker.stop)
    await worker.run()
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(main())
