"""`Results`: many tickets' events on one `Gateway.WatchTickets` stream, resumed across broken connections.

A producer that submitted thousands of tickets follows them all on one
stream instead of one watch per ticket (the Rust SDK's `Client::results()`).
Subscriptions are added and removed by message while the stream runs; the
`add`s and `remove`s made in one pass of the event loop go as one request.

Resume: each followed ticket has its own `Cursor` (the rules of
`_cursor.py`, the same as a single watch). When the stream breaks, it is
reopened after a backoff and every ticket still followed is subscribed again
with `after_seq` = the last seq delivered for it, so no event is missed and
none is delivered twice; a ticket that ended meanwhile comes back as its
terminal snapshot. With `terminal_only` only each ticket's end is sent, so a
reopen subscribes again without `after_seq` (the end was not delivered yet,
or the ticket would not be followed any more).

A ticket stops being followed once its terminal event is delivered (or the
gateway refused it: an event whose `error` is set), or by `remove`. The
stream yields events until nothing is followed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import TYPE_CHECKING

import grpc

from ._aio import within
from ._backoff import Backoff
from ._cursor import Cursor, Verdict
from ._errors import AsyncgateError, Unavailable, from_rpc_error, is_transient
from ._h2 import DirectCall
from ._proto.v1 import gateway_pb2
from ._proto.v1 import ticket_pb2 as pb
from ._types import Event, _state

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Results"]

_WATCH_TICKETS = "/asyncgate.v1.Gateway/WatchTickets"


class Results:
    """Events of many tickets on one stream; see `Client.results`.

    ```
    async with client.results(terminal_only=True) as results:
        for ticket in await client.submit_many(requests):
            results.add(ticket.id)
        async for event in results:        # each ticket's end, in the order they end
            print(event.ticket_id, event.error or event.ticket.state.name)
    ```

    Iterating yields `Event`s (with `ticket_id`; KEEPALIVEs are consumed)
    and stops once no ticket is followed. `next()` is the same as one step,
    returning None at that point. An event whose `error` is set (unknown
    id, another tenant's ticket) ends that ticket's subscription; the others
    go on. A stream error is raised only when it is not transient or
    `ResumeOptions.max_attempts` reopens in a row failed.
    """

    def __init__(self, client: Client, terminal_only: bool) -> None:
        self._client = client
        #: Only each ticket's terminal event (fixed for the stream's life).
        self.terminal_only = terminal_only
        #: id -> its cursor, for every ticket followed whose end was not delivered yet.
        self._open: dict[str, Cursor] = {}
        #: Subscriptions and removals not yet sent on the current stream.
        self._adds: dict[str, int | None] = {}
        self._removes: list[str] = []
        #: Whole requests to send first (a new stream's opening request).
        self._requests: collections.deque[gateway_pb2.WatchTicketsRequest] = collections.deque()
        self._call: grpc.aio.StreamStreamCall | DirectCall | None = None
        #: Events already received and not yet looked at (a direct call hands over all it has at once).
        self._buffer: collections.deque[pb.TicketEvent] = collections.deque()
        #: Writes the pending requests of the current call (one at a time).
        self._flusher: asyncio.Task[None] | None = None
        self._backoff = Backoff(client._resume.min_backoff, client._resume.max_backoff)
        #: Reopen attempts since an event last arrived.
        self._failures = 0
        self._last_error: AsyncgateError | None = None
        #: The first stream was opened (every later open is a resume).
        self._started = False
        self._closed = False

    # -- subscriptions -----------------------------------------------------------

    def add(self, id: str, after_seq: int | None = None) -> None:
        """Follows `id` (adding one twice is once). With `after_seq` (the highest seq
        you processed), the stored output chunks after it are replayed after the snapshot."""
        if self._closed:
            raise RuntimeError("the results stream is closed")
        if id in self._open:
            return
        cursor = Cursor(seq=after_seq)
        self._open[id] = cursor
        if self._call is None and not self._started:
            self._open_stream()  # subscribes everything open, this one included
            return
        if self._call is not None:
            cursor.opened(after_seq)
            self._adds[id] = after_seq
            self._kick()
        # Else reconnecting: the reopen subscribes everything open.

    def add_many(self, ids: Iterable[str]) -> None:
        """`add` for each id (one request for all of them)."""
        for id in ids:
            self.add(id)

    def remove(self, id: str) -> None:
        """Stops following `id`: no event of it is yielded from now on."""
        if self._open.pop(id, None) is None:
            return
        if id in self._adds:
            del self._adds[id]  # never sent
        elif self._call is not None:
            self._removes.append(id)
            self._kick()

    @property
    def pending(self) -> int:
        """Tickets followed whose end has not been delivered yet."""
        return len(self._open)

    def __contains__(self, id: object) -> bool:
        return id in self._open

    # -- the stream --------------------------------------------------------------

    def _open_stream(self) -> None:
        self._started = True
        client = self._client
        if client._direct:
            self._call = DirectCall(
                client._endpoint, _WATCH_TICKETS, pb.TicketEvent.FromString, gateway_pb2.WatchTicketsRequest.SerializeToString
            )
        else:
            self._call = client._stub.WatchTickets(metadata=client._metadata)
        subscriptions = []
        for id, cursor in self._open.items():
            after_seq = None if self.terminal_only else cursor.seq
            cursor.opened(after_seq)
            subscriptions.append(gateway_pb2.WatchSubscription(id=id, after_seq=after_seq))
        self._adds.clear()
        self._removes.clear()
        self._requests.clear()
        # The first request carries terminal_only (later ones cannot change it).
        self._requests.append(gateway_pb2.WatchTicketsRequest(terminal_only=self.terminal_only, add=subscriptions))
        self._kick()

    def _kick(self) -> None:
        """Makes sure the pending changes get written (after this pass of the loop: changes made meanwhile join them)."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        call = self._call
        try:
            while call is not None and call is self._call:
                if self._requests:
                    request = self._requests.popleft()
                elif self._adds or self._removes:
                    request = gateway_pb2.WatchTicketsRequest(
                        add=[gateway_pb2.WatchSubscription(id=id, after_seq=seq) for id, seq in self._adds.items()],
                        remove=self._removes,
                    )
                    self._adds, self._removes = {}, []
                else:
                    return
                await call.write(request)
        except (AsyncgateError, grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, RuntimeError):
            # The reader sees the broken stream and reopens it, subscribing everything open again.
            return

    def __aiter__(self) -> Results:
        return self

    async def __aenter__(self) -> Results:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def next(self) -> Event | None:
        """The next event; None once no ticket is followed."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None

    async def __anext__(self) -> Event:
        options = self._client._resume
        buffer = self._buffer
        while True:
            if self._closed or not self._open:
                raise StopAsyncIteration
            if buffer:
                event = self._accept(buffer.popleft())
                if event is not None:
                    return event
                continue
            if self._call is None:
                await self._reopen()
                continue
            call = self._call
            try:
                if options.idle_timeout is None:
                    message = await call.read()
                else:
                    message = await within(call.read(), options.idle_timeout)
            except asyncio.TimeoutError:
                self._broken(Unavailable(f"no event or keepalive for {options.idle_timeout}s"))
                continue
            except (grpc.aio.AioRpcError, AsyncgateError) as error:
                typed = error if isinstance(error, AsyncgateError) else from_rpc_error(error)
                if is_transient(typed):
                    self._broken(typed)
                    continue
                await self.aclose()
                raise typed from error
            if message is grpc.aio.EOF:
                # A gateway that shuts down ends its streams cleanly: follow again elsewhere.
                self._broken(Unavailable("the results stream ended"))
                continue
            self._failures = 0
            self._backoff.reset()
            if isinstance(call, DirectCall):
                buffer.extend(call.read_ready())
            event = self._accept(message)
            if event is not None:
                return event

    def _accept(self, message: pb.TicketEvent) -> Event | None:
        """The event to yield for `message`, if any; ends the subscriptions that are over."""
        if message.kind == pb.TICKET_EVENT_KIND_KEEPALIVE:
            # The stream is idle, so every replay is over: a ticket whose
            # terminal snapshot came before its replayed chunks is done.
            for id in [id for id, cursor in self._open.items() if cursor.terminal_seen]:
                del self._open[id]
            return None
        id = message.ticket_id or (message.ticket.id if message.HasField("ticket") else "")
        cursor = self._open.get(id)
        if cursor is None:
            return None  # removed meanwhile (or not ours)
        if message.HasField("error"):
            del self._open[id]
            return Event(message)
        if self.terminal_only:
            if not (message.HasField("ticket") and _state(message.ticket.state).terminal):
                return None
            del self._open[id]
            return Event(message)
        verdict = cursor.accept(message)
        if verdict is Verdict.DUPLICATE or verdict is Verdict.KEEPALIVE:
            return None
        if verdict is Verdict.DELIVER_LAST:
            del self._open[id]
        return Event(message)

    def _broken(self, error: AsyncgateError) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self._last_error = error

    async def _reopen(self) -> None:
        """Reopens after a break, with backoff; raises when giving up."""
        options = self._client._resume
        if self._failures >= options.max_attempts:
            await self.aclose()
            raise self._last_error or Unavailable("results stream broken")
        self._failures += 1
        await asyncio.sleep(self._backoff.next_delay())
        if not self._closed:
            self._open_stream()

    async def aclose(self) -> None:
        """Stops following everything and ends the call."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._flusher is not None:
            self._flusher.cancel()
