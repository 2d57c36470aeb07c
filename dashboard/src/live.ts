// Everything the page follows live goes over one Gateway.WatchTickets
// stream. Browsers cannot stream a request body (fetch), so gRPC-Web carries
// one request per stream: the stream is opened with every subscription, and
// reopened (each ticket resuming from the last seq seen, so nothing is
// missed or repeated) when a subscription is added or removed.
import type { DescMethodServerStreaming } from "@bufbuild/protobuf";
import { ConnectError, Code } from "@connectrpc/connect";
import { transport } from "./api";
import { Gateway, type WatchTicketsRequestSchema } from "./gen/asyncgate/v1/gateway_pb";
import { TicketEventKind, type TicketEvent, type TicketEventSchema } from "./gen/asyncgate/v1/ticket_pb";

export type Listener = (event: TicketEvent) => void;

interface Subscription {
  /** The last seq delivered, to resume after it. */
  afterSeq?: bigint;
  listeners: Set<Listener>;
}

/**
 * WatchTickets as the transport sees it: the same path and messages, sent
 * as one request (the server reads the request stream to its end and keeps
 * following). Connect-Web refuses to send a bidi method from a browser.
 */
const watchTickets = {
  ...Gateway.method.watchTickets,
  methodKind: "server_streaming",
} as unknown as DescMethodServerStreaming<typeof WatchTicketsRequestSchema, typeof TicketEventSchema>;

const subscriptions = new Map<string, Subscription>();
let current: AbortController | null = null;
let retryDelay = 500;

/** Follows ticket `id` until the returned function is called. */
export function follow(id: string, listener: Listener): () => void {
  let sub = subscriptions.get(id);
  const added = !sub;
  if (!sub) {
    sub = { listeners: new Set() };
    subscriptions.set(id, sub);
  }
  sub.listeners.add(listener);
  if (added) reopen();
  return () => {
    const s = subscriptions.get(id);
    if (!s) return;
    s.listeners.delete(listener);
    if (s.listeners.size === 0) {
      subscriptions.delete(id);
      reopen();
    }
  };
}

let pending = false;

/**
 * Reopens the stream once for every change made in the same task: a list
 * that follows fifty tickets opens one stream, not fifty.
 */
function reopen(): void {
  if (pending) return;
  pending = true;
  setTimeout(() => {
    pending = false;
    reopenNow();
  }, 0);
}

function reopenNow(): void {
  current?.abort();
  current = null;
  if (subscriptions.size === 0) return;
  const abort = new AbortController();
  current = abort;
  const add = [...subscriptions].map(([id, s]) => ({ id, afterSeq: s.afterSeq ?? 0n }));
  void run(abort, add);
}

async function run(abort: AbortController, add: { id: string; afterSeq: bigint }[]): Promise<void> {
  try {
    const response = await transport.stream(
      watchTickets,
      abort.signal,
      undefined,
      undefined,
      (async function* () {
        yield { add };
      })(),
    );
    for await (const event of response.message) {
      retryDelay = 500;
      deliver(event);
    }
  } catch (e) {
    if (abort.signal.aborted || ConnectError.from(e).code === Code.Canceled) return;
    // A broken stream: reopen after a pause, resuming every ticket.
    setTimeout(() => {
      if (current === abort) reopen();
    }, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10_000);
  }
}

function deliver(event: TicketEvent): void {
  if (event.kind === TicketEventKind.KEEPALIVE || !event.ticketId) return;
  const sub = subscriptions.get(event.ticketId);
  if (!sub) return;
  if (event.seq > (sub.afterSeq ?? 0n)) sub.afterSeq = event.seq;
  for (const listener of sub.listeners) listener(event);
}
