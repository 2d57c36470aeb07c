// Admin.ListQueues as a table, refreshed every few seconds, each queue with
// the target that works it if any; for keys that may: pause / resume, purge
// (confirmed with the count it will cancel), the dispatch limits and, for
// keys not confined to a tenant, the queue's target.
import { Fragment } from "preact";
import { useState } from "preact/hooks";
import { admin, can, describe, type Role } from "../api";
import { millis, span } from "../format";
import type { QueueInfo } from "../gen/asyncgate/v1/admin_pb";
import { usePoll } from "../hooks";
import { href } from "../route";

const REFRESH_MS = 2000;

function Limits({ queue, done }: { queue: QueueInfo; done: (error?: string) => void }) {
  const l = queue.limits;
  const [rate, setRate] = useState(String(l?.maxDispatchPerSecond ?? 0));
  const [burst, setBurst] = useState(String(l?.burst ?? 0));
  const [conc, setConc] = useState(String(l?.maxConcurrent ?? 0));
  const save = async (e: Event) => {
    e.preventDefault();
    try {
      await admin.setQueueLimits({
        name: queue.name,
        limits: { maxDispatchPerSecond: +rate, burst: +burst, maxConcurrent: +conc },
      });
      done();
    } catch (err) {
      done(describe(err));
    }
  };
  const field = (label: string, value: string, set: (v: string) => void) => (
    <label>
      {label}
      <input type="number" min={0} value={value} onInput={(e) => set((e.target as HTMLInputElement).value)} />
    </label>
  );
  return (
    <form class="limits" onSubmit={save} aria-label={`Limits of ${queue.name}`}>
      {field("Dispatch per second", rate, setRate)}
      {field("Burst", burst, setBurst)}
      {field("Running at once", conc, setConc)}
      <span class="hint">0 means unlimited.</span>
      <button type="submit">Save limits</button>
      <button type="button" onClick={() => done()}>Close</button>
    </form>
  );
}

// The service the gateway calls to work the queue (no workers needed), where
// it comes from, and why this gateway does not call it if it does not.
function TargetNote({ queue }: { queue: QueueInfo }) {
  const t = queue.target!;
  const from = t.fromConfig ? "from the gateway's config" : `set by ${t.setBy}`;
  return (
    <div class={t.problem ? "target problem" : "target"} title={t.target}>
      → {t.url || t.target} <span class="hint">({from})</span>
      {t.problem && <span class="error"> {t.problem}</span>}
    </div>
  );
}

// Admin.SetQueueTarget: the URL with its options; an empty one (or Take off)
// removes it. A target from the gateway's config is changed there.
function TargetForm({ queue, done }: { queue: QueueInfo; done: (error?: string) => void }) {
  const [target, setTarget] = useState(queue.target?.target ?? "");
  const set = async (value: string) => {
    try {
      await admin.setQueueTarget({ name: queue.name, target: value });
      done();
    } catch (err) {
      done(describe(err));
    }
  };
  return (
    <form
      class="target"
      onSubmit={(e) => {
        e.preventDefault();
        void set(target.trim());
      }}
      aria-label={`Target of ${queue.name}`}
    >
      <label>
        Target
        <input
          type="url"
          size={60}
          placeholder="grpc://host:port/package.Service/Method?max_concurrent=8"
          value={target}
          onInput={(e) => setTarget((e.target as HTMLInputElement).value)}
        />
      </label>
      <span class="hint">The gateways call it for each ticket; its host must be in --callback-allow.</span>
      <button type="submit">Save target</button>
      {queue.target && (
        <button type="button" class="take-off" onClick={() => void set("")}>
          Take off
        </button>
      )}
      <button type="button" onClick={() => done()}>Close</button>
    </form>
  );
}

function limitsText(q: QueueInfo): string {
  const l = q.limits;
  const parts = [];
  if (l?.maxDispatchPerSecond) parts.push(`${l.maxDispatchPerSecond}/s`);
  if (l?.maxConcurrent) parts.push(`≤ ${l.maxConcurrent} running`);
  return parts.join(", ") || "none";
}

export function Queues({ role }: { role: Role }) {
  const reads = can(role, "Admin/ListQueues");
  const operate = can(role, "Admin/PauseQueue");
  const [error, setError] = useState<string | null>(null);
  const aims = can(role, "Admin/SetQueueTarget");
  // Which queue's editor is open, and which one.
  const [editing, setEditing] = useState<{ name: string; what: "limits" | "target" } | null>(null);
  const toggle = (name: string, what: "limits" | "target") =>
    setEditing(editing?.name === name && editing.what === what ? null : { name, what });
  const { data: queues, error: loadError, reload } = usePoll(
    async () => (reads ? (await admin.listQueues({})).queues : []),
    REFRESH_MS,
    [reads],
  );

  if (!reads) {
    return <p class="notice">This key may not read queues. Open a ticket by its id above.</p>;
  }

  const act = async (what: () => Promise<unknown>) => {
    try {
      await what();
      setError(null);
      reload();
    } catch (e) {
      setError(describe(e));
    }
  };
  const closed = (err?: string) => {
    setEditing(null);
    setError(err ?? null);
    reload();
  };
  const pause = (q: QueueInfo) =>
    act(() =>
      q.pause
        ? admin.resumeQueue({ name: q.name })
        : admin.pauseQueue({ name: q.name, reason: `paused from the dashboard by ${role.name}` }),
    );
  const purge = (q: QueueInfo) => {
    const n = q.counts?.pending ?? 0n;
    if (!confirm(`Cancel the ${n} pending ticket${n === 1n ? "" : "s"} of queue "${q.name}"? This cannot be undone.`)) return;
    void act(() => admin.purgeQueue({ name: q.name }));
  };

  return (
    <section aria-labelledby="queues-title">
      <h2 id="queues-title">Queues</h2>
      {(error ?? loadError) && <p role="alert" class="error">{error ?? loadError}</p>}
      {queues === null ? (
        <p class="loading">Loading…</p>
      ) : queues.length === 0 ? (
        <p class="notice">No queue yet: queues appear on their first submit or worker.</p>
      ) : (
        <div class="table-wrap">
          <table class="queues">
            <thead>
              <tr>
                <th scope="col">Queue</th>
                <th scope="col" class="num">Pending</th>
                <th scope="col" class="num">Running</th>
                <th scope="col" class="num">Succeeded</th>
                <th scope="col" class="num">Failed</th>
                <th scope="col" class="num">Workers</th>
                <th scope="col" class="num">Oldest pending</th>
                <th scope="col">Limits</th>
                <th scope="col">Status</th>
                {operate && <th scope="col"><span class="sr-only">Actions</span></th>}
              </tr>
            </thead>
            <tbody>
              {queues.map((q) => (
                <Fragment key={q.name}>
                  <tr data-queue={q.name}>
                    <th scope="row">
                      <a href={href("tickets", { queue: q.name })}>{q.name}</a>
                      {q.target && <TargetNote queue={q} />}
                    </th>
                    <td class="num" data-count="pending">{String(q.counts?.pending ?? 0n)}</td>
                    <td class="num" data-count="running">{String(q.counts?.running ?? 0n)}</td>
                    <td class="num" data-count="succeeded">{String(q.counts?.succeeded ?? 0n)}</td>
                    <td class="num" data-count="failed">
                      <a href={href("dead-letter", { queue: q.name })}>{String(q.counts?.failed ?? 0n)}</a>
                    </td>
                    <td class="num">{q.workers}</td>
                    <td class="num">{span(millis(q.oldestPendingAge))}</td>
                    <td>{limitsText(q)}</td>
                    <td>
                      {q.pause ? (
                        <span class="badge paused" title={q.pause.reason}>paused by {q.pause.pausedBy}</span>
                      ) : (
                        <span class="badge">active</span>
                      )}
                    </td>
                    {operate && (
                      <td class="actions">
                        <button class={q.pause ? "resume" : "pause"} onClick={() => pause(q)}>
                          {q.pause ? "Resume" : "Pause"}
                          <span class="sr-only"> {q.name}</span>
                        </button>
                        <button class="purge" onClick={() => purge(q)} disabled={(q.counts?.pending ?? 0n) === 0n}>
                          Purge<span class="sr-only"> {q.name}</span>
                        </button>
                        <button class="edit-limits" onClick={() => toggle(q.name, "limits")}>
                          Limits<span class="sr-only"> of {q.name}</span>
                        </button>
                        {aims && (
                          <button
                            class="edit-target"
                            onClick={() => toggle(q.name, "target")}
                            disabled={q.target?.fromConfig}
                            title={q.target?.fromConfig ? "Set in the gateway's config; change it there" : undefined}
                          >
                            Target<span class="sr-only"> of {q.name}</span>
                          </button>
                        )}
                      </td>
                    )}
                  </tr>
                  {operate && editing?.name === q.name && (
                    <tr class="editor">
                      <td colSpan={10}>
                        {editing.what === "limits" ? (
                          <Limits queue={q} done={closed} />
                        ) : (
                          <TargetForm queue={q} done={closed} />
                        )}
                      </td>
                    </tr>
                  )}
                </Fragment>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
