"""`Admin`: the operator's `asyncgate.v1.Admin` calls (queues, workers, finished tickets).

A thin wrapper like the Rust SDK's `Admin`: one method per RPC, on the
client's channel and API key (which must be an `admin` key for the mutating
calls, or a `viewer` key for `list_queues`, `get_queue` and `list_workers`).
Queue and worker descriptions come back as the generated messages
(`admin_pb2.QueueInfo`, `admin_pb2.WorkerInfo`: many fields, all documented
in `proto/asyncgate/v1/admin.proto`); tickets as `Ticket`. Every gRPC
failure leaves as an `AsyncgateError` subclass.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2

from ._errors import from_rpc_error
from ._proto.v1 import admin_pb2, admin_pb2_grpc
from ._types import Ticket, TicketState

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Admin"]


def _timestamp(value: _dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("use an aware datetime (e.g. with tzinfo=datetime.timezone.utc)")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


class Admin:
    """The `Admin` service on a client's channel: `client.admin`."""

    def __init__(self, client: Client) -> None:
        self._stub = admin_pb2_grpc.AdminStub(client._channel)
        self._metadata = client._metadata
        self._timeout = client._call_timeout

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    # -- queues ------------------------------------------------------------------

    async def list_queues(self) -> list[admin_pb2.QueueInfo]:
        """Every queue used so far (on first submit or first worker), by name."""
        response = await self._call(self._stub.ListQueues, admin_pb2.ListQueuesRequest())
        return list(response.queues)

    async def get_queue(self, name: str) -> admin_pb2.QueueInfo:
        """One queue's counts, workers, pause, limits, throughput and latencies; `NotFound` if never used."""
        return await self._call(self._stub.GetQueue, admin_pb2.GetQueueRequest(name=name))

    async def pause_queue(self, name: str, reason: str = "") -> admin_pb2.QueueInfo:
        """Stops dispatch from the queue on every replica (submits are still accepted)."""
        return await self._call(self._stub.PauseQueue, admin_pb2.PauseQueueRequest(name=name, reason=reason))

    async def resume_queue(self, name: str) -> admin_pb2.QueueInfo:
        """Lets a paused queue dispatch again."""
        return await self._call(self._stub.ResumeQueue, admin_pb2.ResumeQueueRequest(name=name))

    async def purge_queue(
        self, name: str, states: Sequence[TicketState] = (), *, created_before: _dt.datetime | None = None
    ) -> int:
        """Cancels the queue's matching tickets (PENDING and/or RUNNING; PENDING by default); how many."""
        request = admin_pb2.PurgeQueueRequest(
            name=name, states=[int(s) for s in states], created_before=_timestamp(created_before)
        )
        return (await self._call(self._stub.PurgeQueue, request)).cancelled

    async def set_queue_limits(
        self, name: str, *, max_dispatch_per_second: int = 0, burst: int = 0, max_concurrent: int = 0
    ) -> admin_pb2.QueueInfo:
        """Flow control on dispatch across all replicas; 0 means unlimited (so no argument clears them)."""
        limits = admin_pb2.QueueLimits(
            max_dispatch_per_second=max_dispatch_per_second, burst=burst, max_concurrent=max_concurrent
        )
        return await self._call(self._stub.SetQueueLimits, admin_pb2.SetQueueLimitsRequest(name=name, limits=limits))

    async def set_queue_target(self, name: str, target: str) -> admin_pb2.QueueInfo:
        """Has every gateway work the queue's tickets by calling `target` — ``grpc(s)://HOST:PORT/pkg.Service/Method``
        or ``http(s)://HOST:PORT/path``, optionally ``?max_concurrent=N&max_per_second=N&retry_on=CODES`` — instead of
        workers; its host must be in the gateways' ``--callback-allow`` list. An empty `target` takes it off."""
        return await self._call(self._stub.SetQueueTarget, admin_pb2.SetQueueTargetRequest(name=name, target=target))

    # -- workers -----------------------------------------------------------------

    async def list_workers(self, queue: str = "") -> list[admin_pb2.WorkerInfo]:
        """Connected worker sessions on every replica; of one queue if named."""
        response = await self._call(self._stub.ListWorkers, admin_pb2.ListWorkersRequest(queue=queue))
        return list(response.workers)

    async def drain_worker(self, session_id: str) -> admin_pb2.WorkerInfo:
        """No new task goes to the session; the worker is told (Drain) and stops once idle."""
        return await self._call(self._stub.DrainWorker, admin_pb2.DrainWorkerRequest(session_id=session_id))

    # -- finished tickets --------------------------------------------------------

    async def retry_ticket(self, id: str) -> Ticket:
        """Runs a FAILED, CANCELLED or EXPIRED ticket again (same id, fresh attempts); the PENDING ticket."""
        return Ticket(await self._call(self._stub.RetryTicket, admin_pb2.RetryTicketRequest(id=id)))

    async def retry_callback(self, id: str) -> Ticket:
        """Sends a given-up completion callback again (same webhook-id, fresh window); the ticket."""
        return Ticket(await self._call(self._stub.RetryCallback, admin_pb2.RetryCallbackRequest(id=id)))

    async def retry_tickets(
        self, queue: str, states: Sequence[TicketState] = (), *, created_before: _dt.datetime | None = None
    ) -> int:
        """`retry_ticket` for every matching ticket of a queue (FAILED by default); how many."""
        request = admin_pb2.RetryTicketsRequest(
            queue=queue, states=[int(s) for s in states], created_before=_timestamp(created_before)
        )
        return (await self._call(self._stub.RetryTickets, request)).retried

    async def delete_ticket(self, id: str) -> _dt.datetime:
        """Removes a terminal ticket now (body, result and output); when it was deleted."""
        response = await self._call(self._stub.DeleteTicket, admin_pb2.DeleteTicketRequest(id=id))
        return response.deleted_at.ToDatetime(tzinfo=_dt.timezone.utc)
