// FAILED tickets (the newest 1,000, of one queue or all) grouped by their
// last error — numbers and ids masked, so "timed out after 1503 ms" and
// "… 1498 ms" are one group — with Retry for a whole group.
import { useState } from "preact/hooks";
import { can, gateway, type Role } from "../api";
import { bulk, summary } from "../bulk";
import { when } from "../format";
import { TicketState, type Ticket } from "../gen/asyncgate/v1/ticket_pb";
import { usePoll } from "../hooks";
import { href, replace } from "../route";

const REFRESH_MS = 5000;
const READ = 1000;

interface Group {
  key: string;
  example: string;
  tickets: Ticket[];
  queues: Set<string>;
}

function maskOf(message: string): string {
  return message
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, "<id>")
    .replace(/\d+(\.\d+)?/g, "#");
}

function group(tickets: Ticket[]): Group[] {
  const groups = new Map<string, Group>();
  for (const t of tickets) {
    const message = t.error?.message ?? "(no error message)";
    const key = maskOf(message);
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { key, example: message, tickets: [], queues: new Set() }));
    g.tickets.push(t);
    g.queues.add(t.queue);
  }
  return [...groups.values()].sort((a, b) => b.tickets.length - a.tickets.length);
}

export function DeadLetter({ role, query }: { role: Role; query: URLSearchParams }) {
  const queue = query.get("queue") ?? "";
  const retries = can(role, "Admin/RetryTicket");
  const [message, setMessage] = useState<string | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  const { data, error, reload } = usePoll(
    () => gateway.listTickets({ queue, states: [TicketState.FAILED], pageSize: READ, newestFirst: true }),
    REFRESH_MS,
    [queue],
  );
  const retry = async (g: Group) => {
    setMessage(`retrying ${g.tickets.length}…`);
    setMessage(summary("retry", await bulk("retry", g.tickets.map((t) => t.id), role.name)));
    reload();
  };
  const groups = data ? group(data.tickets) : [];
  return (
    <section aria-labelledby="dlq-title">
      <h2 id="dlq-title">Dead letter{queue && `: ${queue}`}</h2>
      <form
        class="filters"
        aria-label="Dead-letter queue"
        onSubmit={(e) => {
          e.preventDefault();
          const q = (e.currentTarget.elements.namedItem("queue") as HTMLInputElement).value;
          replace("dead-letter", { queue: q });
        }}
      >
        <label>
          Queue <input name="queue" defaultValue={queue} placeholder="every queue" />
        </label>
        <button type="submit">Show</button>
      </form>
      {error && <p role="alert" class="error">{error}</p>}
      {message && <p role="status" class="status">{message}</p>}
      {data === null ? (
        <p class="loading">Loading…</p>
      ) : groups.length === 0 ? (
        <p class="notice">No failed ticket{queue && ` in ${queue}`}.</p>
      ) : (
        <ul class="groups">
          {data.nextPageToken && <li class="hint">Showing the newest {READ} failed tickets.</li>}
          {groups.map((g) => (
            <li key={g.key} class="group" data-count={g.tickets.length}>
              <div class="group-head">
                <strong class="num">{g.tickets.length}×</strong>
                <span class="error">{g.example}</span>
                <span class="hint">
                  {[...g.queues].join(", ")} · last {when(g.tickets[0].finishedAt ?? g.tickets[0].updatedAt)}
                </span>
                <button onClick={() => setOpen(open === g.key ? null : g.key)} aria-expanded={open === g.key}>
                  {open === g.key ? "Hide" : "Show"} tickets
                </button>
                {retries && (
                  <button class="retry-group" onClick={() => retry(g)}>
                    Retry {g.tickets.length}
                  </button>
                )}
              </div>
              {open === g.key && (
                <ul class="group-tickets">
                  {g.tickets.map((t) => (
                    <li key={t.id}>
                      <a href={`#/tickets/${t.id}`}><code>{t.id}</code></a> · {t.queue} · {when(t.finishedAt)}
                    </li>
                  ))}
                </ul>
              )}
            </li>
          ))}
        </ul>
      )}
      <p>
        <a href={href("tickets", { queue, state: "FAILED" })}>All failed tickets, with filters</a> ·{" "}
        <a href={href("tickets", { queue, callback: "GAVE_UP" })}>Callbacks given up</a>
      </p>
    </section>
  );
}
