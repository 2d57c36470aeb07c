// Small hooks the views share: polling a read, and batching live updates so
// a busy stream costs at most a few renders per second.
import { useEffect, useRef, useState } from "preact/hooks";
import { describe } from "./api";

/** How often batched live updates are rendered. */
export const RENDER_EVERY_MS = 250;

/**
 * Calls `load` now and every `everyMs` while the view is shown (and again
 * when `deps` change); the latest answer or error. Paused while the tab is
 * hidden.
 */
export function usePoll<T>(
  load: () => Promise<T>,
  everyMs: number,
  deps: unknown[],
): { data: T | null; error: string | null; reload: () => void } {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      if (!document.hidden) {
        try {
          const value = await load();
          if (live) (setData(() => value), setError(null));
        } catch (e) {
          if (live) setError(describe(e));
        }
      }
      if (live) timer = setTimeout(run, everyMs);
    };
    void run();
    return () => {
      live = false;
      clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  return { data, error, reload: () => setTick((t) => t + 1) };
}

/**
 * A map from key to the latest value, fed by `put` at any rate and rendered
 * at most every RENDER_EVERY_MS.
 */
export function useBatchedMap<V>(): [Map<string, V>, (key: string, value: V) => void, () => void] {
  const [shown, setShown] = useState<Map<string, V>>(new Map());
  const buffer = useRef(new Map<string, V>());
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);
  useEffect(() => () => {
    if (timer.current) clearTimeout(timer.current);
  }, []);
  const put = (key: string, value: V) => {
    buffer.current.set(key, value);
    if (timer.current) return;
    timer.current = setTimeout(() => {
      timer.current = null;
      const updates = buffer.current;
      buffer.current = new Map();
      setShown((old) => {
        const next = new Map(old);
        for (const [k, v] of updates) next.set(k, v);
        return next;
      });
    }, RENDER_EVERY_MS);
  };
  const clear = () => {
    buffer.current = new Map();
    setShown(new Map());
  };
  return [shown, put, clear];
}
