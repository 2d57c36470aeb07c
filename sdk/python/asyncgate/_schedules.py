"""`Schedules`: the `asyncgate.v1.Schedules` calls (tickets the gateway submits itself).

A thin wrapper like the Rust SDK's `Schedules`: one method per RPC, on the
client's channel and API key (a `client` or `admin` key; a `viewer` key may
`get` and `list`). Schedules come back as the generated
`schedules_pb2.Schedule` (spec, ticket, policies, recent runs, next fire
times: documented in `proto/asyncgate/v1/schedules.proto`); `cron` and
`every` build one. Every gRPC failure leaves as an `AsyncgateError` subclass.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ._errors import from_rpc_error
from ._proto.v1 import gateway_pb2, schedules_pb2, schedules_pb2_grpc
from ._types import Ticket

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Schedules", "OVERLAP"]

#: Overlap policies by name, for `cron(..., overlap=...)` and `every(...)`.
OVERLAP = {
    "skip": schedules_pb2.OVERLAP_POLICY_SKIP,
    "allow": schedules_pb2.OVERLAP_POLICY_ALLOW,
    "buffer_one": schedules_pb2.OVERLAP_POLICY_BUFFER_ONE,
    "cancel_previous": schedules_pb2.OVERLAP_POLICY_CANCEL_PREVIOUS,
}


def _stamp(value: _dt.datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        raise ValueError("use an aware datetime (e.g. with tzinfo=datetime.timezone.utc)")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _schedule(
    id: str, spec: schedules_pb2.ScheduleSpec, ticket: gateway_pb2.SubmitRequest, overlap: str, jitter: float | None
) -> schedules_pb2.Schedule:
    schedule = schedules_pb2.Schedule(id=id, spec=spec, ticket=ticket, overlap_policy=OVERLAP[overlap])
    if jitter:
        schedule.jitter.FromTimedelta(_dt.timedelta(seconds=jitter))
    return schedule


class Schedules:
    """The `Schedules` service on a client's channel: `client.schedules`."""

    def __init__(self, client: Client) -> None:
        self._stub = schedules_pb2_grpc.SchedulesStub(client._channel)
        self._metadata = client._metadata
        self._timeout = client._call_timeout

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    @staticmethod
    def cron(
        id: str,
        expression: str,
        ticket: gateway_pb2.SubmitRequest,
        *,
        time_zone: str = "",
        overlap: str = "skip",
        jitter: float | None = None,
    ) -> schedules_pb2.Schedule:
        """A schedule firing at a cron expression's times (five fields, or six with seconds first)."""
        spec = schedules_pb2.ScheduleSpec(cron=expression, time_zone=time_zone)
        return _schedule(id, spec, ticket, overlap, jitter)

    @staticmethod
    def every(
        id: str, seconds: float, ticket: gateway_pb2.SubmitRequest, *, overlap: str = "skip", jitter: float | None = None
    ) -> schedules_pb2.Schedule:
        """A schedule firing every `seconds` (counted from the Unix epoch)."""
        interval = duration_pb2.Duration()
        interval.FromTimedelta(_dt.timedelta(seconds=seconds))
        spec = schedules_pb2.ScheduleSpec(interval=interval)
        return _schedule(id, spec, ticket, overlap, jitter)

    async def create(self, schedule: schedules_pb2.Schedule) -> schedules_pb2.Schedule:
        """Creates it (`AlreadyExists` if the id is taken); it fires from its next slot."""
        return await self._call(self._stub.CreateSchedule, schedules_pb2.CreateScheduleRequest(schedule=schedule))

    async def get(self, id: str) -> schedules_pb2.Schedule:
        """One schedule, with its recent runs and next fire times."""
        return await self._call(self._stub.GetSchedule, schedules_pb2.GetScheduleRequest(id=id))

    async def list(self) -> list[schedules_pb2.Schedule]:
        """Every schedule this key sees, by id (all pages)."""
        schedules: list[schedules_pb2.Schedule] = []
        token = ""
        while True:
            page = await self._call(
                self._stub.ListSchedules, schedules_pb2.ListSchedulesRequest(page_size=1000, page_token=token)
            )
            schedules.extend(page.schedules)
            if not page.next_page_token:
                return schedules
            token = page.next_page_token

    async def update(self, schedule: schedules_pb2.Schedule) -> schedules_pb2.Schedule:
        """Replaces its definition (named by its id); it goes on from its next slot."""
        return await self._call(self._stub.UpdateSchedule, schedules_pb2.UpdateScheduleRequest(schedule=schedule))

    async def delete(self, id: str) -> None:
        """Deletes it (its tickets stay)."""
        await self._call(self._stub.DeleteSchedule, schedules_pb2.DeleteScheduleRequest(id=id))

    async def pause(self, id: str, note: str = "") -> schedules_pb2.Schedule:
        """Nothing fires until `resume`."""
        return await self._call(self._stub.PauseSchedule, schedules_pb2.PauseScheduleRequest(id=id, note=note))

    async def resume(self, id: str) -> schedules_pb2.Schedule:
        """Fires again from its next slot (slots in the pause do not run)."""
        return await self._call(self._stub.ResumeSchedule, schedules_pb2.ResumeScheduleRequest(id=id))

    async def trigger(self, id: str) -> Ticket:
        """One run now, whatever the overlap policy; its ticket."""
        response = await self._call(self._stub.TriggerSchedule, schedules_pb2.TriggerScheduleRequest(id=id))
        return Ticket(response.ticket)

    async def backfill(self, id: str, start: _dt.datetime, end: _dt.datetime) -> list[Ticket]:
        """Every slot from `start` to `end` (both included; at most 1,000), one ticket each, never two."""
        request = schedules_pb2.BackfillScheduleRequest(id=id)
        getattr(request, "from").CopyFrom(_stamp(start))
        request.to.CopyFrom(_stamp(end))
        response = await self._call(self._stub.BackfillSchedule, request)
        return [Ticket(ticket) for ticket in response.tickets]
