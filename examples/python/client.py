#!/usr/bin/env python3
"""An Asyncgate client in Python: submits text and follows each ticket.

By default every TEXT is sent with `Gateway/Submit` (which answers at once
with a PENDING ticket), then each ticket is followed with
`Gateway/WatchTicket` (a snapshot, then one event per change, ending after
the terminal event). With --execute each TEXT goes through `Gateway/Execute`
instead: submit and watch in one call.

Every event is printed as `event <id> #<seq> <KIND> <STATE>`, and the end of
each ticket as `result <id> <STATE> <result or error>`. The exit code is 0
when every ticket SUCCEEDED, 1 otherwise.

Run ./generate.sh first: it writes the stubs to gen/ (or put a directory of
stubs on PYTHONPATH).
"""

import argparse
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2

sys.path.append(str(Path(__file__).resolve().parent / "gen"))
from asyncgate.v1 import gateway_pb2, gateway_pb2_grpc, ticket_pb2  # noqa: E402

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"}
# Ticket errors carry codes in gRPC numbering.
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def state_name(ticket: ticket_pb2.Ticket) -> str:
    return ticket_pb2.TicketState.Name(ticket.state).removeprefix("TICKET_STATE_")


def outcome(ticket: ticket_pb2.Ticket) -> str:
    """The result (as JSON, or the binary body) or the error of a ticket."""
    if ticket.HasField("error"):
        code = CODE_NAMES.get(ticket.error.code, str(ticket.error.code))
        return f"error {code}: {ticket.error.message}"
    payload = ticket.result
    if payload.WhichOneof("kind") == "binary":
        return payload.binary.decode("utf-8", errors="replace")
    return json_format.MessageToJson(payload.json, indent=None)


def follow(events) -> bool:
    """Prints a ticket's events until the stream ends; True if it SUCCEEDED."""
    last = None
    for event in events:
        kind = ticket_pb2.TicketEventKind.Name(event.kind).removeprefix("TICKET_EVENT_KIND_")
        if kind == "KEEPALIVE":  # only tells that the stream is alive
            continue
        last = ticket = event.ticket
        line = f"event  {ticket.id} #{event.seq} {kind} {state_name(ticket)}"
        if kind == "PROGRESS":
            line += f" {ticket.progress.percent}% {ticket.progress.message}"
        elif ticket.waiting_reason.description:
            line += f" ({ticket.waiting_reason.description})"
        print(line, flush=True)
    if last is None or state_name(last) not in TERMINAL:
        raise RuntimeError("the stream ended before the ticket finished")
    print(f"result {last.id} {state_name(last)} {outcome(last)}", flush=True)
    return state_name(last) == "SUCCEEDED"


def main() -> int:
    parser = argparse.ArgumentParser(description="Submit text to an Asyncgate queue and follow the tickets.")
    parser.add_argument("texts", nargs="*", metavar="TEXT", default=["hello", "world"])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the gateway, host:port (default: %(default)s)")
    parser.add_argument(
        "--api-key", default=os.environ.get("ASYNCGATE_API_KEY"), help="API key (default: $ASYNCGATE_API_KEY)"
    )
    parser.add_argument("--queue", default="upper", help="the queue (default: %(default)s)")
    parser.add_argument("--execute", action="store_true", help="use Execute instead of Submit + WatchTicket")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per ticket (default: %(default)s)")
    args = parser.parse_args()

    metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
    requests = [
        gateway_pb2.SubmitRequest(
            queue=args.queue,
            payload=ticket_pb2.Payload(json=struct_pb2.Value(string_value=text)),
        )
        for text in args.texts
    ]
    succeeded = True
    with grpc.insecure_channel(args.target) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        if args.execute:
            for request in requests:
                succeeded &= follow(gateway.Execute(request, metadata=metadata, timeout=args.timeout))
        else:
            tickets = [gateway.Submit(request, metadata=metadata, timeout=10) for request in requests]
            for ticket in tickets:
                print(f"submit {ticket.id} {state_name(ticket)}", flush=True)
            for ticket in tickets:
                watch = gateway_pb2.WatchTicketRequest(id=ticket.id)
                succeeded &= follow(gateway.WatchTicket(watch, metadata=metadata, timeout=args.timeout))
    return 0 if succeeded else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as error:
        sys.exit(f"client.py: {error.code().name}: {error.details()}")
