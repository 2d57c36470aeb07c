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

/** The logged-in key: who it is and what it may call. */
export interface Role {
  name: string;
  role: string;
  tenant: string;
  /** Whether tickets show it their results and output. */
  seesPayloads: boolean;
  /** Full method paths it may call ("/asyncgate.v1.Admin/PauseQueue"). */
  methods: Set<string>;
}

/** Learns the key's role from Gateway.WhoAmI (no side effects, no audit noise). */
export async function whoAmI(): Promise<Role> {
  const me = await gateway.whoAmI({});
  return {
    name: me.keyName,
    role: me.role,
    tenant: me.tenant,
    seesPayloads: me.seesPayloads,
    methods: new Set(me.methods),
  };
}

/** Whether the key may call `method` ("Admin/PauseQueue", "Gateway/CancelTicket"). */
export function can(role: Role, method: string): boolean {
  return role.methods.has(`/asyncgate.v1.${method}`);
}

/** A one-line message for an error, for people. */
export function describe(e: unknown): string {
  const err = ConnectError.from(e);
  return `${Code[err.code] ?? err.code}: ${err.rawMessage}`;
}
