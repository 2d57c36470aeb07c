// Connected worker sessions on every replica (Admin.ListWorkers): queues,
// max_in_flight, the tickets each holds, connected since, last heard from
// (red once longer ago than the gateway's heartbeat interval), and Drain
// for keys that may.
import { useState } from "preact/hooks";
import { admin, can, describe, type Role } from "../api";
import { millis, span, when } from "../format";
import { usePoll } from "../hooks";

const REFRESH_MS = 2000;

export function Workers({ role }: { role: Role }) {
  const reads = can(role, "Admin/ListWorkers");
  const drains = can(role, "Admin/DrainWorker");
  const [error, setError] = useState<string | null>(null);
  const { data, error: loadError, reload } = usePoll(
    () => (reads ? admin.listWorkers({}) : Promise.resolve(null)),
    REFRESH_MS,
    [reads],
  );
  if (!reads) return <p class="notice">This key may not list workers.</p>;
  const heartbeat = millis(data?.heartbeatInterval) ?? 5000;
  // Ages are the gateway's (its clock, at the answer): a healthy worker is
  // heard once per interval, so half an interval more is a missed beat.
  const lateAfter = heartbeat * 1.5;
  const drain = async (session: string) => {
    try {
      await admin.drainWorker({ sessionId: session });
      setError(null);
      reload();
    } catch (e) {
      setError(describe(e));
    }
  };
  return (
    <section aria-labelledby="workers-title">
      <h2 id="workers-title">Workers</h2>
      <p class="hint">Late (red): missed a heartbeat (not heard from for 1.5 × the gateway's interval of {span(heartbeat)}).</p>
      {(error ?? loadError) && <p role="alert" class="error">{error ?? loadError}</p>}
      {data === null ? (
        <p class="loading">Loading…</p>
      ) : data.workers.length === 0 ? (
        <p class="notice">No worker is connected.</p>
      ) : (
        <div class="table-wrap">
          <table class="workers">
            <thead>
              <tr>
                <th scope="col">Worker</th>
                <th scope="col">Session</th>
                <th scope="col">Queues</th>
                <th scope="col" class="num">Holds / max</th>
                <th scope="col">Connected</th>
                <th scope="col">Last heard</th>
                <th scope="col">Replica</th>
                {drains && <th scope="col"><span class="sr-only">Actions</span></th>}
              </tr>
            </thead>
            <tbody>
              {data.workers.map((w) => {
                const age = millis(w.lastHeardAge) ?? 0;
                const late = age > lateAfter;
                return (
                  <tr key={w.sessionId} data-session={w.sessionId} class={late ? "late" : undefined}>
                    <th scope="row">
                      {w.workerName || "–"} {w.draining && <span class="badge paused">draining</span>}
                      {w.peer && <div class="hint">{w.peer}</div>}
                    </th>
                    <td><code>{w.sessionId.slice(0, 8)}</code></td>
                    <td>{w.queues.join(", ")}</td>
                    <td class="num" title={w.tickets.join("\n")}>{w.tickets.length} / {w.maxInFlight}</td>
                    <td>{when(w.connectedAt)}</td>
                    <td class={late ? "error" : undefined} data-late={late ? "true" : undefined}>
                      {span(age)} ago
                    </td>
                    <td>{w.replica}</td>
                    {drains && (
                      <td>
                        <button class="drain" disabled={w.draining} onClick={() => drain(w.sessionId)}>
                          Drain<span class="sr-only"> {w.workerName}</span>
                        </button>
                      </td>
                    )}
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
