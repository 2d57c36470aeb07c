// One ticket, followed live over the page's WatchTickets stream: a
// timeline (submitted, each attempt with its worker, session and lease and
// how it ended, the running attempt, the end), the waiting reason while
// pending, progress, output chunks, the result, the W3C trace id, the
// completion callback's delivery; cancel, retry, delete and retry callback
// for keys that may.
import { useEffect, useState } from "preact/hooks";
import { admin, can, describe, gateway, type Role } from "../api";
import { date, show, span, stateName, terminal, traceId, when } from "../format";
import {
  CallbackState,
  TicketEventKind,
  TicketState,
  WaitingReasonKind,
  type CallbackDelivery,
  type Ticket,
} from "../gen/asyncgate/v1/ticket_pb";
import { follow } from "../live";

interface Chunk {
  seq: bigint;
  text: string;
}

function Timeline({ ticket }: { ticket: Ticket }) {
  const leased = ticket.state === TicketState.RUNNING && ticket.waitingReason?.kind === WaitingReasonKind.LEASED;
  const ms = (a?: Date, b?: Date) => (a && b ? span(b.getTime() - a.getTime()) : "");
  return (
    <ol class="timeline" aria-label="Timeline">
      <li>
        <time>{when(ticket.createdAt)}</time> Submitted to <strong>{ticket.queue}</strong>
        {ticket.scheduledFor && <> to run at {when(ticket.scheduledFor)}</>}
      </li>
      {ticket.attempts.map((a, i) => (
        <li key={i} class={a.error ? "bad" : "good"} data-attempt={a.number}>
          <time>{when(a.startedAt)}</time> Attempt {a.number} on <strong>{a.workerName || "a worker"}</strong>{" "}
          <span class="hint">
            session <code>{a.workerSession.slice(0, 8)}</code>, lease <code>{a.leaseId.slice(0, 8)}</code>, ran{" "}
            {ms(date(a.startedAt), date(a.endedAt))}
          </span>
          {a.error ? <div class="error">{a.error.message}</div> : <div>result recorded</div>}
        </li>
      ))}
      {leased && (
        <li class="now" data-attempt={ticket.attempt}>
          <time>{when(ticket.waitingReason?.since)}</time> Attempt {ticket.attempt} running on{" "}
          <strong>{ticket.waitingReason?.workerName}</strong>{" "}
          <span class="hint">session <code>{ticket.waitingReason?.workerSession.slice(0, 8)}</code></span>
        </li>
      )}
      {terminal(ticket.state) && (
        <li class={ticket.state === TicketState.SUCCEEDED ? "good" : "bad"}>
          <time>{when(ticket.finishedAt)}</time> {stateName(ticket.state)}
          {ticket.error && <div class="error">{ticket.error.message}</div>}
        </li>
      )}
      {ticket.callback && <CallbackItem callback={ticket.callback} />}
    </ol>
  );
}

function CallbackItem({ callback }: { callback: CallbackDelivery }) {
  const state = CallbackState[callback.state] ?? String(callback.state);
  const cls =
    callback.state === CallbackState.DELIVERED ? "good" : callback.state === CallbackState.GAVE_UP ? "bad" : "now";
  const at =
    callback.state === CallbackState.DELIVERED ? callback.deliveredAt : callback.nextAttemptAt;
  return (
    <li class={cls} data-callback={state}>
      <time>{when(at)}</time> Callback to <code>{callback.url}</code>: {state.toLowerCase().replace("_", " ")}
      {callback.attempts > 0 && <> after {callback.attempts} attempt{callback.attempts === 1 ? "" : "s"}</>}
      {callback.webhookId && <span class="hint"> (webhook-id <code>{callback.webhookId}</code>)</span>}
      {callback.lastError && <div class="error">{callback.lastError}</div>}
    </li>
  );
}

export function TicketView({ id, role }: { id: string; role: Role }) {
  const [ticket, setTicket] = useState<Ticket | null>(null);
  const [chunks, setChunks] = useState<Chunk[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [gone, setGone] = useState<string | null>(null);

  useEffect(() => {
    setTicket(null);
    setChunks([]);
    setError(null);
    setGone(null);
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
      if (event.kind === TicketEventKind.SNAPSHOT && event.ticket?.attempt === 0) setChunks([]);
    });
  }, [id]);

  const act = async (what: () => Promise<Ticket | unknown>) => {
    try {
      const t = await what();
      if (t && typeof t === "object" && "state" in t) setTicket(t as Ticket);
      setError(null);
    } catch (e) {
      setError(describe(e));
    }
  };
  const cancel = () => act(() => gateway.cancelTicket({ id, reason: `cancelled from the dashboard by ${role.name}` }));
  const retry = () => act(() => admin.retryTicket({ id }));
  const remove = async () => {
    if (!confirm("Delete this ticket with its result and output? This cannot be undone.")) return;
    try {
      await admin.deleteTicket({ id });
      setGone("Deleted.");
    } catch (e) {
      setError(describe(e));
    }
  };

  const trace = traceId(ticket?.metadata["traceparent"]);
  const state = ticket ? stateName(ticket.state) : "";
  const done = ticket ? terminal(ticket.state) : false;
  const percent = ticket?.progress?.percent ?? (ticket?.state === TicketState.SUCCEEDED ? 100 : 0);
  return (
    <section aria-labelledby="ticket-title">
      <h2 id="ticket-title">
        Ticket <code>{id}</code>
      </h2>
      {error && <p role="alert" class="error">{error}</p>}
      {gone && <p role="status">{gone}</p>}
      {!ticket ? (
        !error && <p class="loading">Loading…</p>
      ) : (
        <>
          <div class="actions" role="toolbar" aria-label="Ticket actions">
            {can(role, "Gateway/CancelTicket") && !done && <button class="cancel" onClick={cancel}>Cancel ticket</button>}
            {can(role, "Admin/RetryTicket") && done && ticket.state !== TicketState.SUCCEEDED && (
              <button class="retry" onClick={retry}>Retry</button>
            )}
            {can(role, "Admin/DeleteTicket") && done && <button class="delete" onClick={remove}>Delete</button>}
            {can(role, "Admin/RetryCallback") && ticket.callback?.state === CallbackState.GAVE_UP && (
              <button class="retry-callback" onClick={() => act(() => admin.retryCallback({ id }))}>
                Retry callback
              </button>
            )}
          </div>
          <dl class="ticket">
            <dt>State</dt>
            <dd>
              <span class={`badge state-${state.toLowerCase()}`} data-testid="state">{state}</span>
            </dd>
            <dt>Queue</dt>
            <dd>{ticket.queue}</dd>
            <dt>Attempts</dt>
            <dd>{ticket.attempt} / {ticket.maxAttempts}</dd>
            {ticket.waitingReason && !done && (
              <>
                <dt>Waiting</dt>
                <dd data-testid="waiting">{ticket.waitingReason.description}</dd>
              </>
            )}
            <dt>Progress</dt>
            <dd>
              <progress aria-label="Progress" max={100} value={percent} /> {percent}% {ticket.progress?.message}
            </dd>
            {trace && (
              <>
                <dt>Trace id</dt>
                <dd><code data-testid="trace">{trace}</code></dd>
              </>
            )}
            {Object.keys(ticket.metadata).length > 0 && (
              <>
                <dt>Metadata</dt>
                <dd>
                  {Object.entries(ticket.metadata).map(([k, v]) => (
                    <div key={k}><code>{k}</code> = <code>{v}</code></div>
                  ))}
                </dd>
              </>
            )}
          </dl>
          <h3>Timeline</h3>
          <Timeline ticket={ticket} />
          {ticket.payloadsHidden && <p class="notice">This key may not see payloads: the result and output are hidden.</p>}
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
