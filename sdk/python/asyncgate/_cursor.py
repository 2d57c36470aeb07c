"""The resume bookkeeping of one ticket's event stream: a port of the Rust SDK's `Cursor`.

It does no I/O, so its rules are unit-tested event by event
(`tests/test_units.py`). The gateway's seq rules it relies on: the first
event of every stream is a SNAPSHOT whose seq is that of the latest change it
reflects; with `after_seq`, the stored OUTPUT chunks with
`after_seq < seq <= snapshot.seq` follow; then live events, each seq one
higher than the last. A watcher that fell behind gets a resynchronisation
SNAPSHOT followed the same way by the chunks it missed. KEEPALIVEs carry no
ticket and only prove the stream alive.

Rules:
- The caller has seen everything up to `seq`; non-SNAPSHOT events at or
  below it are replays after a resume and are dropped.
- Only the first SNAPSHOT of a stream opened *without* `after_seq` moves
  the cursor (nothing is replayed after it). Every other SNAPSHOT is
  followed by the stored chunks after the last seq, which lie below its
  seq, so it leaves the cursor alone.
- A terminal non-SNAPSHOT event ends the stream, as does the terminal first
  SNAPSHOT of a fresh stream. A terminal SNAPSHOT that chunks may follow
  only marks the ticket as over: the stream ends when the gateway closes it
  (or sends a KEEPALIVE, i.e. has nothing more).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._proto.v1 import ticket_pb2 as pb
from ._types import TicketState

__all__ = ["Cursor", "Verdict"]


class Verdict(enum.Enum):
    """What to do with one received event."""

    #: Pass it on; the stream goes on.
    DELIVER = "deliver"
    #: Pass it on; it is the last one (the ticket is over).
    DELIVER_LAST = "deliver-last"
    #: A KEEPALIVE: proof of life, not for the caller.
    KEEPALIVE = "keepalive"
    #: Already delivered before a resume: drop it.
    DUPLICATE = "duplicate"


@dataclass
class Cursor:
    """Which seq the caller has seen and what that means for the next event."""

    #: The highest seq the caller has processed: the `after_seq` of the next (re)open.
    seq: int | None = None
    #: The next SNAPSHOT is the first of a stream opened without `after_seq`.
    fresh: bool = False
    #: A terminal SNAPSHOT arrived that replayed chunks may follow.
    terminal_seen: bool = False

    def opened(self, after_seq: int | None) -> None:
        """A new stream was opened with `after_seq`."""
        self.fresh = after_seq is None
        self.terminal_seen = False

    def accept(self, event: pb.TicketEvent) -> Verdict:
        """Decides about `event` and advances the cursor."""
        terminal = event.HasField("ticket") and TicketState(event.ticket.state).terminal
        if event.kind == pb.TICKET_EVENT_KIND_KEEPALIVE:
            return Verdict.KEEPALIVE
        if event.kind == pb.TICKET_EVENT_KIND_SNAPSHOT:
            if self.fresh:
                self.fresh = False
                self.seq = event.seq if self.seq is None else max(self.seq, event.seq)
                return Verdict.DELIVER_LAST if terminal else Verdict.DELIVER
            # Replayed chunks with seq <= snapshot.seq may follow.
            self.terminal_seen |= terminal
            return Verdict.DELIVER
        self.fresh = False
        if self.seq is not None and event.seq <= self.seq:
            return Verdict.DUPLICATE
        self.seq = event.seq
        # Replayed chunks carry the ticket as the snapshot showed it, terminal
        # too: after a terminal snapshot only the close (or a keepalive) ends it.
        return Verdict.DELIVER_LAST if terminal and not self.terminal_seen else Verdict.DELIVER
