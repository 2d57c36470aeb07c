// Per queue: throughput (completed and failed per second) and latency
// (queue wait and run time, p50 and p95) over the last 15 minutes, from
// Admin.ListQueues with history (15-second buckets summed over replicas),
// with depth, the oldest pending ticket's age and the workers.
import { useMemo } from "preact/hooks";
import { admin, can, type Role } from "../api";
import { millis, span } from "../format";
import type { QueueInfo } from "../gen/asyncgate/v1/admin_pb";
import { usePoll } from "../hooks";
import { href } from "../route";
import { Chart } from "./Chart";

const REFRESH_MS = 5000;
const BUCKET_S = 15;
const BUCKETS = 61;

/** The queue's buckets over the whole 15 minutes (empty ones as 0 / gaps). */
function series(queue: QueueInfo, nowS: number) {
  const last = Math.floor(nowS / BUCKET_S) * BUCKET_S;
  const xs = Array.from({ length: BUCKETS }, (_, i) => last - (BUCKETS - 1 - i) * BUCKET_S);
  const byStart = new Map(queue.history.map((b) => [Number(b.start?.seconds ?? 0n), b]));
  const ok: number[] = [], failed: number[] = [];
  const waitP50: (number | null)[] = [], waitP95: (number | null)[] = [];
  const runP50: (number | null)[] = [], runP95: (number | null)[] = [];
  for (const x of xs) {
    const b = byStart.get(x);
    ok.push(Number(b?.succeeded ?? 0n) / BUCKET_S);
    failed.push(Number(b?.failed ?? 0n) / BUCKET_S);
    waitP50.push(millis(b?.queueWait?.p50) ?? null);
    waitP95.push(millis(b?.queueWait?.p95) ?? null);
    runP50.push(millis(b?.runTime?.p50) ?? null);
    runP95.push(millis(b?.runTime?.p95) ?? null);
  }
  return {
    throughput: [xs, ok, failed],
    latency: [xs, waitP50, waitP95, runP50, runP95],
  };
}

function QueueCard({ queue, nowS }: { queue: QueueInfo; nowS: number }) {
  const data = useMemo(() => series(queue, nowS), [queue, nowS]);
  const pending = queue.counts?.pending ?? 0n;
  return (
    <article class="card" data-queue={queue.name} aria-labelledby={`q-${queue.name}`}>
      <header>
        <h3 id={`q-${queue.name}`}>
          <a href={href("tickets", { queue: queue.name })}>{queue.name}</a>
        </h3>
        {queue.pause && <span class="badge paused">paused</span>}
      </header>
      <dl class="facts">
        <div><dt>Pending</dt><dd data-fact="pending">{String(pending)}</dd></div>
        <div><dt>Running</dt><dd>{String(queue.counts?.running ?? 0n)}</dd></div>
        <div><dt>Oldest pending</dt><dd>{span(millis(queue.oldestPendingAge))}</dd></div>
        <div><dt>Workers</dt><dd>{queue.workers}</dd></div>
        <div><dt>Last minute</dt><dd>{String(queue.lastMinute?.succeeded ?? 0n)} ok / {String(queue.lastMinute?.failed ?? 0n)} failed</dd></div>
      </dl>
      <Chart
        title={`${queue.name}: completed per second`}
        format={(v) => `${+v.toFixed(2)}/s`}
        series={[
          { label: "succeeded", color: "var(--good)" },
          { label: "failed", color: "var(--bad)" },
        ]}
        data={data.throughput}
      />
      <Chart
        title={`${queue.name}: latency`}
        format={span}
        points
        series={[
          { label: "wait p50", color: "var(--accent)" },
          { label: "wait p95", color: "var(--accent)", dash: [4, 4] },
          { label: "run p50", color: "var(--warn)" },
          { label: "run p95", color: "var(--warn)", dash: [4, 4] },
        ]}
        data={data.latency}
      />
    </article>
  );
}

export function Overview({ role }: { role: Role }) {
  const reads = can(role, "Admin/ListQueues");
  const { data, error } = usePoll(
    async () => (reads ? (await admin.listQueues({ history: true })).queues : []),
    REFRESH_MS,
    [reads],
  );
  if (!reads) return <p class="notice">This key may not read queues. Open a ticket by its id above.</p>;
  const nowS = Date.now() / 1000;
  return (
    <section aria-labelledby="overview-title">
      <h2 id="overview-title">Overview</h2>
      {error && <p role="alert" class="error">{error}</p>}
      {data === null ? (
        <p class="loading">Loading…</p>
      ) : data.length === 0 ? (
        <p class="notice">No queue yet: queues appear on their first submit or worker.</p>
      ) : (
        <div class="cards">
          {data.map((q) => (
            <QueueCard key={q.name} queue={q} nowS={nowS} />
          ))}
        </div>
      )}
    </section>
  );
}
