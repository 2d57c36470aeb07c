// Tickets, newest first: filters by queue, state, a metadata entry,
// creation time and callback state (kept in the URL), paging, live rows (the page re-reads
// its list every two seconds and follows every unfinished ticket on it over
// the one WatchTickets stream, rendering at most four times a second), and
// retry / cancel / delete on the selected tickets for keys that may.
import { useEffect, useState } from "preact/hooks";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { can, gateway, type Role } from "../api";
import { bulk, BULK_METHODS, summary, type BulkAction } from "../bulk";
import { stateName, terminal, when } from "../format";
import { CallbackState, TicketState, type Ticket } from "../gen/asyncgate/v1/ticket_pb";
import { useBatchedMap, usePoll } from "../hooks";
import { follow } from "../live";
import { href, replace } from "../route";

const REFRESH_MS = 2000;
const PAGE_SIZE = 50;
const STATES = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"] as const;

const CALLBACK_STATES = ["WAITING", "PENDING", "DELIVERED", "GAVE_UP"] as const;

function filtersOf(query: URLSearchParams) {
  return {
    queue: query.get("queue") ?? "",
    state: query.get("state") ?? "",
    meta: query.get("meta") ?? "",
    after: query.get("after") ?? "",
    before: query.get("before") ?? "",
    callback: query.get("callback") ?? "",
  };
}
type Filters = ReturnType<typeof filtersOf>;

function request(f: Filters, pageToken: string) {
  const [key, ...rest] = f.meta.split("=");
  return {
    queue: f.queue,
    states: f.state ? [TicketState[f.state as keyof typeof TicketState]] : [],
    metadata: f.meta && key ? { [key]: rest.join("=") } : {},
    createdAfter: f.after ? timestampFromDate(new Date(f.after)) : undefined,
    createdBefore: f.before ? timestampFromDate(new Date(f.before)) : undefined,
    callbackStates: f.callback ? [CallbackState[f.callback as keyof typeof CallbackState]] : [],
    pageSize: PAGE_SIZE,
    pageToken,
    newestFirst: true,
  };
}

function FilterBar({ filters }: { filters: Filters }) {
  const [draft, setDraft] = useState(filters);
  useEffect(() => setDraft(filters), [JSON.stringify(filters)]);
  const input = (name: keyof Filters, label: string, type: "text" | "datetime-local" = "text", placeholder = "") => (
    <label>
      {label}
      <input
        name={name}
        type={type as "text"}
        value={draft[name]}
        placeholder={placeholder}
        onInput={(e) => setDraft({ ...draft, [name]: (e.target as HTMLInputElement).value })}
      />
    </label>
  );
  return (
    <form
      class="filters"
      aria-label="Filter tickets"
      onSubmit={(e) => {
        e.preventDefault();
        replace("tickets", draft);
      }}
    >
      {input("queue", "Queue", "text", "every queue")}
      <label>
        State
        <select name="state" value={draft.state} onChange={(e) => setDraft({ ...draft, state: (e.target as HTMLSelectElement).value })}>
          <option value="">every state</option>
          {STATES.map((s) => (
            <option key={s} value={s}>{s}</option>
          ))}
        </select>
      </label>
      {input("meta", "Metadata", "text", "key=value")}
      <label>
        Callback
        <select
          name="callback"
          value={draft.callback}
          onChange={(e) => setDraft({ ...draft, callback: (e.target as HTMLSelectElement).value })}
        >
          <option value="">any</option>
          {CALLBACK_STATES.map((s) => (
            <option key={s} value={s}>{s.toLowerCase().replace("_", " ")}</option>
          ))}
        </select>
      </label>
      {input("after", "Created after", "datetime-local")}
      {input("before", "Created before", "datetime-local")}
      <button type="submit">Apply</button>
    </form>
  );
}

export function TicketRow({
  ticket,
  live,
  selectable,
  selected,
  toggle,
}: {
  ticket: Ticket;
  /** Shown as the stream last told it (not as the list read it). */
  live: boolean;
  selectable: boolean;
  selected: boolean;
  toggle: () => void;
}) {
  const state = stateName(ticket.state);
  const note = terminal(ticket.state) ? ticket.error?.message : ticket.waitingReason?.description;
  return (
    <tr data-ticket={ticket.id} data-state={state} data-live={live ? "true" : undefined}>
      {selectable && (
        <td>
          <input type="checkbox" checked={selected} onChange={toggle} aria-label={`Select ticket ${ticket.id}`} />
        </td>
      )}
      <td><a href={`#/tickets/${ticket.id}`}><code>{ticket.id.slice(0, 8)}…{ticket.id.slice(-4)}</code></a></td>
      <td>{ticket.queue}</td>
      <td><span class={`badge state-${state.toLowerCase()}`}>{state}</span></td>
      <td class="num">{ticket.attempt}/{ticket.maxAttempts}</td>
      <td>{when(ticket.createdAt)}</td>
      <td class="note" title={note}>{note}</td>
    </tr>
  );
}

export function Tickets({ role, query }: { role: Role; query: URLSearchParams }) {
  const filters = filtersOf(query);
  const key = JSON.stringify(filters);
  const [tokens, setTokens] = useState<string[]>([""]);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [message, setMessage] = useState<string | null>(null);
  const [live, put, clearLive] = useBatchedMap<Ticket>();
  useEffect(() => (setTokens([""]), setSelected(new Set())), [key]);
  const token = tokens[tokens.length - 1];
  const { data, error, reload } = usePoll(() => gateway.listTickets(request(filters, token)), REFRESH_MS, [key, token]);

  // Follow the unfinished tickets shown, on the page's one stream.
  const open = (data?.tickets ?? []).filter((t) => !terminal(t.state)).map((t) => t.id);
  useEffect(() => {
    const stops = open.map((id) => follow(id, (e) => e.ticket && put(id, e.ticket)));
    return () => stops.forEach((stop) => stop());
  }, [open.join(",")]);
  useEffect(() => clearLive(), [key, token]);

  const actions = (Object.keys(BULK_METHODS) as BulkAction[]).filter((a) => can(role, BULK_METHODS[a]));
  const run = async (action: BulkAction) => {
    const ids = [...selected];
    if (action === "delete" && !confirm(`Delete ${ids.length} ticket(s) with their results? This cannot be undone.`)) return;
    setMessage(`${action}: ${ids.length}…`);
    setMessage(summary(action, await bulk(action, ids, role.name)));
    setSelected(new Set());
    reload();
  };
  // The stream's version wins unless the list has read a later one.
  const tickets = (data?.tickets ?? []).map((t) => {
    const newer = live.get(t.id);
    return newer && newer.seq >= t.seq ? { ticket: newer, live: true } : { ticket: t, live: false };
  });
  const toggle = (id: string) => {
    const next = new Set(selected);
    if (!next.delete(id)) next.add(id);
    setSelected(next);
  };
  const all = tickets.length > 0 && tickets.every(({ ticket: t }) => selected.has(t.id));

  return (
    <section aria-labelledby="tickets-title">
      <h2 id="tickets-title">Tickets</h2>
      <FilterBar filters={filters} />
      {error && <p role="alert" class="error">{error}</p>}
      {message && <p role="status" class="status">{message}</p>}
      {actions.length > 0 && (
        <div class="bulk" role="toolbar" aria-label="Selected tickets">
          <span>{selected.size} selected</span>
          {actions.map((a) => (
            <button key={a} class={`bulk-${a}`} disabled={selected.size === 0} onClick={() => run(a)}>
              {a[0].toUpperCase() + a.slice(1)}
            </button>
          ))}
        </div>
      )}
      {data === null ? (
        <p class="loading">Loading…</p>
      ) : (
        <div class="table-wrap">
          <table class="tickets">
            <thead>
              <tr>
                {actions.length > 0 && (
                  <th scope="col">
                    <input
                      type="checkbox"
                      aria-label="Select every ticket on this page"
                      checked={all}
                      onChange={() => setSelected(all ? new Set() : new Set(tickets.map(({ ticket: t }) => t.id)))}
                    />
                  </th>
                )}
                <th scope="col">Ticket</th>
                <th scope="col">Queue</th>
                <th scope="col">State</th>
                <th scope="col" class="num">Attempts</th>
                <th scope="col">Created</th>
                <th scope="col">Waiting for / error</th>
              </tr>
            </thead>
            <tbody>
              {tickets.map(({ ticket: t, live }) => (
                <TicketRow
                  key={t.id}
                  ticket={t}
                  live={live}
                  selectable={actions.length > 0}
                  selected={selected.has(t.id)}
                  toggle={() => toggle(t.id)}
                />
              ))}
            </tbody>
          </table>
          {tickets.length === 0 && <p class="notice">No ticket matches.</p>}
        </div>
      )}
      <nav class="pager" aria-label="Pages">
        <button disabled={tokens.length === 1} onClick={() => setTokens(tokens.slice(0, -1))}>Newer</button>
        <button disabled={!data?.nextPageToken} onClick={() => data && setTokens([...tokens, data.nextPageToken])}>Older</button>
        <a href={href("dead-letter", { queue: filters.queue })}>Dead letter</a>
      </nav>
    </section>
  );
}
