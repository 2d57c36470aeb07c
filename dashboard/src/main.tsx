// The dashboard's shell: login, the hash router (see route.ts), the header
// and navigation. Views get the key's role (Gateway.WhoAmI) and show only
// the actions it allows.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { can, describe, forgetKey, storeKey, storedKey, whoAmI, type Role } from "./api";
import { useRoute, type Route } from "./route";
import { DeadLetter } from "./views/DeadLetter";
import { Overview } from "./views/Overview";
import { Queues } from "./views/Queues";
import { TicketView } from "./views/Ticket";
import { Tickets } from "./views/Tickets";
import { Workers } from "./views/Workers";
import "./style.css";

const VIEWS = [
  ["overview", "Overview"],
  ["queues", "Queues"],
  ["tickets", "Tickets"],
  ["workers", "Workers"],
  ["dead-letter", "Dead letter"],
] as const;

function View({ route, role }: { route: Route; role: Role }) {
  const [view = "overview", id] = route.path;
  switch (view) {
    case "queues":
      return <Queues role={role} />;
    case "tickets":
      return id ? <TicketView id={id} role={role} /> : <Tickets role={role} query={route.query} />;
    case "workers":
      return <Workers role={role} />;
    case "dead-letter":
      return <DeadLetter role={role} query={route.query} />;
    default:
      return <Overview role={role} />;
  }
}

function Login({ onLogin }: { onLogin: (role: Role) => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    storeKey(key.trim());
    try {
      onLogin(await whoAmI());
    } catch (err) {
      forgetKey();
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <h1>Asyncgate</h1>
      <form onSubmit={submit} aria-label="Log in">
        <label for="key">API key</label>
        <input
          id="key"
          name="key"
          type="password"
          autocomplete="off"
          value={key}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
          autofocus
        />
        <p class="hint">Kept in this tab only (sessionStorage). Leave empty for a gateway without --keys.</p>
        <button type="submit" disabled={busy}>Log in</button>
        {error && <p role="alert" class="error">{error}</p>}
      </form>
    </main>
  );
}

function OpenTicket() {
  const [id, setId] = useState("");
  return (
    <form
      class="open-ticket"
      aria-label="Open a ticket"
      onSubmit={(e) => {
        e.preventDefault();
        if (id.trim()) location.hash = `#/tickets/${encodeURIComponent(id.trim())}`;
        setId("");
      }}
    >
      <input
        aria-label="Ticket id"
        placeholder="ticket id"
        value={id}
        onInput={(e) => setId((e.target as HTMLInputElement).value)}
      />
      <button type="submit">Open</button>
    </form>
  );
}

function App() {
  const route = useRoute();
  const [role, setRole] = useState<Role | null>(null);
  const [checking, setChecking] = useState(storedKey() !== null);
  useEffect(() => {
    // A reload keeps the tab's key: learn its role again.
    if (storedKey() === null) return;
    whoAmI()
      .then(setRole)
      .catch(() => forgetKey())
      .finally(() => setChecking(false));
  }, []);
  if (checking) return <p class="loading">Connecting…</p>;
  if (!role) return <Login onLogin={setRole} />;
  const logout = () => {
    forgetKey();
    setRole(null);
  };
  const current = route.path[0] ?? "overview";
  const reads = can(role, "Admin/ListQueues");
  return (
    <>
      <header>
        <a class="brand" href="#/overview">Asyncgate</a>
        <nav aria-label="Views">
          {VIEWS.filter(([path]) => reads || path === "tickets").map(([path, label]) => (
            <a key={path} href={`#/${path}`} aria-current={current === path ? "page" : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <OpenTicket />
        <span class="who" title={role.tenant ? `tenant ${role.tenant}` : "every tenant"}>
          {role.name} <span class="badge">{role.role}</span>
        </span>
        <button class="logout" onClick={logout}>Log out</button>
      </header>
      <main>
        <View route={route} role={role} />
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
