// A time-series chart (uPlot): created once, fed new data in place, sized
// to its container. Colours come from the page's CSS variables so it reads
// in light and dark.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Series {
  label: string;
  /** A CSS colour or var(--name). */
  color: string;
  dash?: number[];
}

function resolve(color: string, el: Element): string {
  const v = /^var\((--[\w-]+)\)$/.exec(color);
  return v ? getComputedStyle(el).getPropertyValue(v[1]).trim() || "#888" : color;
}

/** "dark" or "light", following the system as it changes. */
function useScheme(): string {
  const query = matchMedia("(prefers-color-scheme: dark)");
  const [dark, setDark] = useState(query.matches);
  useEffect(() => {
    const changed = () => setDark(query.matches);
    query.addEventListener("change", changed);
    return () => query.removeEventListener("change", changed);
  }, []);
  return dark ? "dark" : "light";
}

export function Chart({
  title,
  format,
  series,
  data,
  points = false,
}: {
  /** Draw each value as a point too (sparse series: a lone bucket shows). */
  points?: boolean;
  title: string;
  /** A value as the axis and legend show it. */
  format: (v: number) => string;
  series: Series[];
  /** [x (Unix seconds), ...one array per series]. */
  data: (number | null)[][];
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const latest = useRef(data);
  latest.current = data;
  const scheme = useScheme();

  useEffect(() => {
    const el = box.current!;
    const axis = resolve("var(--muted)", el);
    const grid = resolve("var(--line)", el);
    const opts: uPlot.Options = {
      width: el.clientWidth || 320,
      height: 160,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      axes: [
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
        {
          stroke: axis,
          grid: { stroke: grid, width: 1 },
          ticks: { stroke: grid },
          size: 72,
          values: (_u, vals) => vals.map((v) => format(v)),
        },
      ],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: resolve(s.color, el),
          width: 1.5,
          dash: s.dash,
          spanGaps: false,
          points: { show: points, size: 4 },
          value: (_u: uPlot, v: number | null) => (v == null ? "–" : format(v)),
        })),
      ],
    };
    plot.current = new uPlot(opts, latest.current as uPlot.AlignedData, el);
    const resize = new ResizeObserver(() => {
      plot.current?.setSize({ width: el.clientWidth, height: 160 });
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
    // Built once per chart and colour scheme; data flows in below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [scheme]);

  useEffect(() => {
    plot.current?.setData(data as uPlot.AlignedData);
  }, [data]);

  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <div ref={box} role="img" aria-label={title} />
    </figure>
  );
}
