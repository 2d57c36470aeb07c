// Actions on many tickets at once: each is its own authorised, audited
// call (the API has no bulk form for a hand-picked set), a few at a time.
import { admin, describe, gateway } from "./api";

export type BulkAction = "retry" | "cancel" | "delete";

export const BULK_METHODS: Record<BulkAction, string> = {
  retry: "Admin/RetryTicket",
  cancel: "Gateway/CancelTicket",
  delete: "Admin/DeleteTicket",
};

/** Calls at once. */
const PARALLEL = 8;

export interface BulkOutcome {
  done: number;
  /** One line per refused ticket: "id: CODE: message". */
  failed: string[];
}

function one(action: BulkAction, id: string, who: string): Promise<unknown> {
  switch (action) {
    case "retry":
      return admin.retryTicket({ id });
    case "cancel":
      return gateway.cancelTicket({ id, reason: `cancelled from the dashboard by ${who}` });
    case "delete":
      return admin.deleteTicket({ id });
  }
}

export async function bulk(action: BulkAction, ids: string[], who: string): Promise<BulkOutcome> {
  const outcome: BulkOutcome = { done: 0, failed: [] };
  let next = 0;
  const lane = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      try {
        await one(action, id, who);
        outcome.done++;
      } catch (e) {
        outcome.failed.push(`${id}: ${describe(e)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, ids.length) }, lane));
  return outcome;
}

export function summary(action: BulkAction, outcome: BulkOutcome): string {
  const verb = { retry: "retried", cancel: "cancelled", delete: "deleted" }[action];
  const head = `${outcome.done} ${verb}`;
  return outcome.failed.length ? `${head}; ${outcome.failed.length} refused: ${outcome.failed.slice(0, 3).join("; ")}` : head;
}
