// How values read for people: payloads, durations, times, states.
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { TicketState, type Payload } from "./gen/asyncgate/v1/ticket_pb";

/** A payload for people: pretty JSON, UTF-8 text when its type says so, else hex with its size. */
export function show(payload: Payload | undefined): string {
  if (!payload) return "";
  switch (payload.kind.case) {
    case "json":
      return JSON.stringify(toJson(ValueSchema, payload.kind.value), null, 2);
    case "binary": {
      const bytes = payload.kind.value;
      if (/^text\/|json/.test(payload.contentType)) return new TextDecoder().decode(bytes);
      const hex = [...bytes.subarray(0, 4096)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
      const more = bytes.length > 4096 ? " …" : "";
      return `${bytes.length} bytes${payload.contentType ? ` (${payload.contentType})` : ""}\n${hex}${more}`;
    }
    default:
      return "";
  }
}

export function millis(d: Duration | undefined): number | undefined {
  return d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : undefined;
}

export function date(t: Timestamp | undefined): Date | undefined {
  return t ? new Date(Number(t.seconds) * 1000 + t.nanos / 1e6) : undefined;
}

/** "850 ms", "12.3 s", "4 min", "2 h". */
export function span(ms: number | undefined): string {
  if (ms === undefined) return "–";
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

/** A time as local hh:mm:ss (with the date when not today). */
export function when(t: Timestamp | undefined): string {
  const d = date(t);
  if (!d) return "–";
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function stateName(state: TicketState): string {
  return TicketState[state] ?? String(state);
}

export function terminal(state: TicketState): boolean {
  return state >= TicketState.SUCCEEDED;
}

/** The trace id of a W3C `traceparent` ("00-<trace id>-<span id>-<flags>"). */
export function traceId(traceparent: string | undefined): string | undefined {
  const m = traceparent && /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(traceparent.trim());
  return m ? m[1] : undefined;
}
