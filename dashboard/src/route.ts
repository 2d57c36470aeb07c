// The hash router: every view has a stable, shareable URL such as
// #/tickets?queue=emails&state=FAILED or #/tickets/<id>. Nothing secret is
// ever put in it (the key stays in sessionStorage).
import { useEffect, useState } from "preact/hooks";

export interface Route {
  /** The path's segments: ["tickets", "<id>"]. */
  path: string[];
  query: URLSearchParams;
}

export function parse(hash: string): Route {
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?", 2);
  return {
    path: path.split("/").filter(Boolean).map(decodeURIComponent),
    query: new URLSearchParams(query),
  };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parse(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parse(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

/** The URL of `path` with `query`'s non-empty entries. */
export function href(path: string, query: Record<string, string | undefined> = {}): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v) params.set(k, v);
  const q = params.toString();
  return `#/${path}${q ? `?${q}` : ""}`;
}

/** Goes to `path` with `query`, replacing the history entry (filters). */
export function replace(path: string, query: Record<string, string | undefined>): void {
  history.replaceState(null, "", href(path, query));
  dispatchEvent(new HashChangeEvent("hashchange"));
}
