"""The SDK's view of the protocol's data: payloads, ticket states, tickets and events.

`Ticket` and `Event` wrap the generated messages (kept as `.proto` for
anything not surfaced here) and decode what callers need most: the state as
an enum, the result and output as Python values. Payload conversion lives
here too, and is the only place that decides how Python values travel:

- `bytes`/`bytearray`/`memoryview` go as `binary` (the fast path, untouched);
- a `pb.Payload` goes as it is;
- anything else goes as JSON (`google.protobuf.Value`).

JSON numbers travel as doubles (that is what `google.protobuf.Value` holds):
decoding turns integral numbers back into `int` so that `{"n": 1}` round-trips
as `{"n": 1}`, not `{"n": 1.0}`.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass
from typing import Any, Union

from google.protobuf import json_format, struct_pb2

from ._errors import from_code
from ._proto.v1 import ticket_pb2 as pb

__all__ = [
    "PayloadLike",
    "TicketState",
    "EventKind",
    "TicketError",
    "Progress",
    "Ticket",
    "Event",
    "to_payload",
    "json_payload",
    "bytes_payload",
    "decode_payload",
]

#: What may be given wherever a payload is expected.
PayloadLike = Union[pb.Payload, bytes, bytearray, memoryview, Any]

# The largest double below which every integer is exact.
_EXACT_INT = 2**53


class TicketState(enum.IntEnum):
    """Where a ticket is in its life (the proto's `TicketState`)."""

    UNSPECIFIED = pb.TICKET_STATE_UNSPECIFIED
    PENDING = pb.TICKET_STATE_PENDING
    RUNNING = pb.TICKET_STATE_RUNNING
    SUCCEEDED = pb.TICKET_STATE_SUCCEEDED
    FAILED = pb.TICKET_STATE_FAILED
    CANCELLED = pb.TICKET_STATE_CANCELLED
    EXPIRED = pb.TICKET_STATE_EXPIRED

    @property
    def terminal(self) -> bool:
        """SUCCEEDED, FAILED, CANCELLED and EXPIRED never change again."""
        return self in _TERMINAL


_TERMINAL = frozenset({TicketState.SUCCEEDED, TicketState.FAILED, TicketState.CANCELLED, TicketState.EXPIRED})


class EventKind(enum.IntEnum):
    """The kind of a ticket event (the proto's `TicketEventKind`)."""

    UNSPECIFIED = pb.TICKET_EVENT_KIND_UNSPECIFIED
    SNAPSHOT = pb.TICKET_EVENT_KIND_SNAPSHOT
    STATE = pb.TICKET_EVENT_KIND_STATE
    PROGRESS = pb.TICKET_EVENT_KIND_PROGRESS
    OUTPUT = pb.TICKET_EVENT_KIND_OUTPUT
    KEEPALIVE = pb.TICKET_EVENT_KIND_KEEPALIVE


def _state(value: int) -> TicketState:
    try:
        return TicketState(value)
    except ValueError:  # a state added after this SDK: not terminal, as far as we know
        return TicketState.UNSPECIFIED


def json_payload(value: Any, content_type: str = "") -> pb.Payload:
    """A JSON payload from a JSON-compatible Python value."""
    return pb.Payload(json=json_format.ParseDict(value, struct_pb2.Value()), content_type=content_type)


def bytes_payload(data: bytes | bytearray | memoryview, content_type: str = "") -> pb.Payload:
    """A binary payload, sent untouched."""
    return pb.Payload(binary=bytes(data), content_type=content_type)


def to_payload(value: PayloadLike) -> pb.Payload:
    """A payload from bytes (binary), a `Payload` (as is) or any JSON value."""
    if isinstance(value, pb.Payload):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes_payload(value)
    return json_payload(value)


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INT:
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def decode_payload(payload: pb.Payload | None) -> Any:
    """The Python value of a payload: `bytes` for binary, the JSON value otherwise (None when absent)."""
    if payload is None:
        return None
    kind = payload.WhichOneof("kind")
    if kind == "binary":
        return payload.binary
    if kind == "json":
        return _integral(json_format.MessageToDict(payload.json))
    return None


@dataclass(frozen=True)
class TicketError:
    """Why a ticket failed: a gRPC code (as a `grpc.StatusCode` number), a message, and whether a retry may help."""

    code: int
    message: str
    retryable: bool


@dataclass(frozen=True)
class Progress:
    """The latest progress a worker reported."""

    percent: int
    message: str


def _time(stamp: Any, present: bool) -> _dt.datetime | None:
    return stamp.ToDatetime(tzinfo=_dt.timezone.utc) if present else None


class Ticket:
    """A ticket as the gateway last described it (a read-only view of `pb.Ticket`)."""

    __slots__ = ("proto",)

    def __init__(self, proto: pb.Ticket) -> None:
        #: The message itself, for any field not surfaced here.
        self.proto = proto

    @property
    def id(self) -> str:
        return self.proto.id

    @property
    def queue(self) -> str:
        return self.proto.queue

    @property
    def state(self) -> TicketState:
        return _state(self.proto.state)

    @property
    def done(self) -> bool:
        """Whether the ticket is terminal."""
        return self.state.terminal

    @property
    def attempt(self) -> int:
        return self.proto.attempt

    @property
    def callback(self) -> pb.CallbackDelivery | None:
        """Its completion callback and how delivering it goes; None without one."""
        return self.proto.callback if self.proto.HasField("callback") else None

    @property
    def max_attempts(self) -> int:
        return self.proto.max_attempts

    @property
    def priority(self) -> int:
        return self.proto.priority

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.proto.metadata)

    @property
    def seq(self) -> int:
        """The seq of the latest event this view reflects."""
        return self.proto.seq

    @property
    def idempotency_key(self) -> str:
        return self.proto.idempotency_key

    @property
    def result(self) -> Any:
        """The decoded result once SUCCEEDED (bytes or a JSON value), else None."""
        return decode_payload(self.proto.result) if self.proto.HasField("result") else None

    @property
    def error(self) -> TicketError | None:
        if not self.proto.HasField("error"):
            return None
        error = self.proto.error
        return TicketError(error.code, error.message, error.retryable)

    @property
    def progress(self) -> Progress | None:
        if not self.proto.HasField("progress"):
            return None
        return Progress(self.proto.progress.percent, self.proto.progress.message)

    @property
    def waiting_reason(self) -> str:
        """Why it is not done yet, in one sentence ("" when terminal)."""
        return self.proto.waiting_reason.description

    @property
    def created_at(self) -> _dt.datetime | None:
        return _time(self.proto.created_at, self.proto.HasField("created_at"))

    @property
    def finished_at(self) -> _dt.datetime | None:
        return _time(self.proto.finished_at, self.proto.HasField("finished_at"))

    @property
    def scheduled_for(self) -> _dt.datetime | None:
        """The time a delayed submit (`delay`, `not_before`) asked for; None otherwise."""
        return _time(self.proto.scheduled_for, self.proto.HasField("scheduled_for"))

    def __repr__(self) -> str:
        return f"Ticket(id={self.id!r}, queue={self.queue!r}, state={self.state.name}, attempt={self.attempt})"


class Event:
    """One event of a ticket's stream (a view of `pb.TicketEvent`)."""

    __slots__ = ("proto",)

    def __init__(self, proto: pb.TicketEvent) -> None:
        #: The message itself.
        self.proto = proto

    @property
    def seq(self) -> int:
        return self.proto.seq

    @property
    def kind(self) -> EventKind:
        try:
            return EventKind(self.proto.kind)
        except ValueError:
            return EventKind.UNSPECIFIED

    @property
    def ticket(self) -> Ticket | None:
        """The ticket after this change (None on a KEEPALIVE)."""
        return Ticket(self.proto.ticket) if self.proto.HasField("ticket") else None

    @property
    def output(self) -> Any:
        """The decoded partial-output chunk of an OUTPUT event, else None."""
        return decode_payload(self.proto.output) if self.proto.HasField("output") else None

    @property
    def terminal(self) -> bool:
        """Whether the ticket in this event is terminal."""
        return self.proto.HasField("ticket") and _state(self.proto.ticket.state).terminal

    @property
    def ticket_id(self) -> str:
        """The ticket this event is about (set on `Client.results` streams, also on an error)."""
        return self.proto.ticket_id or (self.proto.ticket.id if self.proto.HasField("ticket") else "")

    @property
    def error(self) -> Any:
        """On a `Client.results` stream: why the ticket cannot be followed (an `AsyncgateError`,
        e.g. `NotFound`); no further event comes for it. None otherwise."""
        if not self.proto.HasField("error"):
            return None
        return from_code(self.proto.error.code, self.proto.error.message)

    def __repr__(self) -> str:
        state = _state(self.proto.ticket.state).name if self.proto.HasField("ticket") else "-"
        error = f", error={self.error}" if self.proto.HasField("error") else ""
        return f"Event(ticket_id={self.ticket_id!r}, seq={self.seq}, kind={self.kind.name}, state={state}{error})"
