// The gateway's public API over gRPC-Web, from the page's own origin (the
// gateway serves the page, so no CORS is involved). The API key is kept in
// sessionStorage (gone with the tab, never in a URL) and sent on every call
// as `authorization: Bearer <key>`.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Admin } from "./gen/asyncgate/v1/admin_pb";
import { Gateway } from "./gen/asyncgate/v1/gateway_pb";

const KEY = "asyncgate.apiKey";

/** The key of this tab's session, or null before login. */
export function storedKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function storeKey(key: string): void {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey(): void {
  sessionStorage.removeItem(KEY);
}

const auth: Interceptor = (next) => async (req) => {
  const key = storedKey();
  if (key) req.header.set("authorization", `Bearer ${key}`);
  return next(req);
};

export const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  interceptors: [auth],
});

export const gateway = createClient(Gateway, transport);
export const admin = createClient(Admin, transport);

/** What the key may do, as far as the page needs to know. */
export interface Role {
  /** Admin reads: ListQueues (admin and viewer keys). */
  read: boolean;
  /** Pause and resume queues (admin keys). */
  operate: boolean;
  /** Cancel tickets (client and admin keys). */
  cancel: boolean;
}

/**
 * Learns the key's role without side effects. The API has no "who am I"
 * call, but the gateway checks a key's role before reading the request, so
 * a request that could never succeed (an empty name or id) answers
 * PERMISSION_DENIED for a role that may not call the method and
 * INVALID_ARGUMENT for one that may; UNAUTHENTICATED means a bad key.
 */
export async function probeRole(): Promise<Role> {
  const allowed = async (call: () => Promise<unknown>): Promise<boolean> => {
    try {
      await call();
      return true;
    } catch (e) {
      const err = ConnectError.from(e);
      if (err.code === Code.Unauthenticated) throw err;
      return err.code !== Code.PermissionDenied;
    }
  };
  const [read, operate, cancel] = await Promise.all([
    allowed(() => admin.listQueues({})),
    allowed(() => admin.pauseQueue({ name: "" })),
    allowed(() => gateway.cancelTicket({ id: "" })),
  ]);
  return { read, operate, cancel };
}

/** A one-line message for an error, for people. */
export function describe(e: unknown): string {
  const err = ConnectError.from(e);
  return `${Code[err.code] ?? err.code}: ${err.rawMessage}`;
}
