// Admin.ListQueues as a table, refreshed every few seconds; pause and
// resume for admin keys only.
import { useEffect, useState } from "preact/hooks";
import { admin, describe, type Role } from "../api";
import type { QueueInfo } from "../gen/asyncgate/v1/admin_pb";

/** How often the table is read again. */
const REFRESH_MS = 2000;

export function Queues({ role }: { role: Role }) {
  const [queues, setQueues] = useState<QueueInfo[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);

  useEffect(() => {
    if (!role.read) return;
    let live = true;
    const load = () =>
      admin
        .listQueues({})
        .then((r) => live && (setQueues(r.queues), setError(null)))
        .catch((e) => live && setError(describe(e)));
    void load();
    const timer = setInterval(load, REFRESH_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [role.read, tick]);

  if (!role.read) {
    return <p class="notice">This key may not read queues. Open a ticket by its id above.</p>;
  }

  const act = async (queue: QueueInfo) => {
    try {
      if (queue.pause) await admin.resumeQueue({ name: queue.name });
      else await admin.pauseQueue({ name: queue.name, reason: "paused from the dashboard" });
      setTick((t) => t + 1);
    } catch (e) {
      setError(describe(e));
    }
  };

  return (
    <section aria-labelledby="queues-title">
      <h2 id="queues-title">Queues</h2>
      {error && <p role="alert" class="error">{error}</p>}
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
                <th scope="col">Status</th>
                {role.operate && <th scope="col"><span class="sr-only">Actions</span></th>}
              </tr>
            </thead>
            <tbody>
              {queues.map((q) => (
                <tr key={q.name} data-queue={q.name}>
                  <th scope="row">{q.name}</th>
                  <td class="num" data-count="pending">{String(q.counts?.pending ?? 0n)}</td>
                  <td class="num" data-count="running">{String(q.counts?.running ?? 0n)}</td>
                  <td class="num" data-count="succeeded">{String(q.counts?.succeeded ?? 0n)}</td>
                  <td class="num" data-count="failed">{String(q.counts?.failed ?? 0n)}</td>
                  <td class="num">{q.workers}</td>
                  <td class="num">{q.oldestPendingAge ? `${q.oldestPendingAge.seconds} s` : "–"}</td>
                  <td>
                    {q.pause ? (
                      <span class="badge paused" title={q.pause.reason}>paused by {q.pause.pausedBy}</span>
                    ) : (
                      <span class="badge">active</span>
                    )}
                  </td>
                  {role.operate && (
                    <td>
                      <button class={q.pause ? "resume" : "pause"} onClick={() => act(q)}>
                        {q.pause ? "Resume" : "Pause"}
                        <span class="sr-only"> {q.name}</span>
                      </button>
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
