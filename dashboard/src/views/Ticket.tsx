// One ticket, followed live over the page's WatchTickets stream: state,
// waiting reason, attempts, progress, output chunks and the result; Cancel
// for keys that may cancel.
import { useEffect, useState } from "preact/hooks";
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { describe, gateway, type Role } from "../api";
import { follow } from "../live";
import { TicketEventKind, TicketState, type Payload, type Ticket } from "../gen/asyncgate/v1/ticket_pb";

interface Chunk {
  seq: bigint;
  text: string;
}

/** A payload for people: pretty JSON, UTF-8 text when its type says so, else hex. */
export function show(payload: Payload | undefined): string {
  if (!payload) return "";
  switch (payload.kind.case) {
    case "json":
      return JSON.stringify(toJson(ValueSchema, payload.kind.value), null, 2);
    case "binary": {
      const bytes = payload.kind.value;
      if (/^text\/|json/.test(payload.contentType)) return new TextDecoder().decode(bytes);
      return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    }
    default:
      return "";
  }
}

function terminal(state: TicketState): boolean {
  return state >= TicketState.SUCCEEDED;
}

export function TicketView({ id, role }: { id: string; role: Role }) {
  const [ticket, setTicket] = useState<Ticket | null>(null);
  const [chunks, setChunks] = useState<Chunk[]>([]);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    setTicket(null);
    setChunks([]);
    setError(null);
    return follow(id, (event) => {
      if (event.error) {
        setError(`${event.error.code}: ${event.error.message}`);
        return;
      }
      if (event.ticket) setTicket(event.ticket);
      if (event.kind === TicketEventKind.OUTPUT && event.output) {
        const chunk = { seq: event.seq, text: show(event.output) };
        setChunks((old) => (old.some((c) => c.seq === chunk.seq) ? old : [...old, chunk]));
      }
    });
  }, [id]);

  const cancel = async () => {
    try {
      setTicket(await gateway.cancelTicket({ id, reason: "cancelled from the dashboard" }));
    } catch (e) {
      setError(describe(e));
    }
  };

  return (
    <section aria-labelledby="ticket-title">
      <h2 id="ticket-title">
        Ticket <code>{id}</code>
      </h2>
      {error && <p role="alert" class="error">{error}</p>}
      {!ticket ? (
        !error && <p class="loading">Loading…</p>
      ) : (
        <>
          <dl class="ticket">
            <dt>State</dt>
            <dd>
              <span class={`badge state-${TicketState[ticket.state].toLowerCase()}`} data-testid="state">
                {TicketState[ticket.state]}
              </span>
            </dd>
            <dt>Queue</dt>
            <dd>{ticket.queue}</dd>
            <dt>Attempts</dt>
            <dd>
              {ticket.attempt} / {ticket.maxAttempts}
            </dd>
            {ticket.waitingReason && !terminal(ticket.state) && (
              <>
                <dt>Waiting</dt>
                <dd data-testid="waiting">{ticket.waitingReason.description}</dd>
              </>
            )}
            {ticket.error && (
              <>
                <dt>Error</dt>
                <dd class="error">{ticket.error.message}</dd>
              </>
            )}
            <dt>Progress</dt>
            <dd>
              <progress aria-label="Progress" max={100} value={ticket.progress?.percent ?? (ticket.state === TicketState.SUCCEEDED ? 100 : 0)} />{" "}
              {ticket.progress?.percent ?? 0}% {ticket.progress?.message}
            </dd>
          </dl>
          {role.cancel && !terminal(ticket.state) && (
            <button class="cancel" onClick={cancel}>
              Cancel ticket
            </button>
          )}
          {chunks.length > 0 && (
            <>
              <h3>Output</h3>
              <pre class="output" data-testid="output">{chunks.map((c) => c.text).join("")}</pre>
            </>
          )}
          {ticket.result && (
            <>
              <h3>Result</h3>
              <pre class="result" data-testid="result">{show(ticket.result)}</pre>
            </>
          )}
        </>
      )}
    </section>
  );
}
