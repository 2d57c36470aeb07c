// The dashboard's shell: login, the hash router (#/queues, #/tickets/ID),
// and the header. Views get the key's role and show only what it allows.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { describe, forgetKey, probeRole, storeKey, storedKey, type Role } from "./api";
import { Queues } from "./views/Queues";
import { TicketView } from "./views/Ticket";
import "./style.css";

type Route = { view: "queues" } | { view: "ticket"; id: string };

function parse(hash: string): Route {
  const ticket = /^#\/tickets\/([^/]+)$/.exec(hash);
  if (ticket) return { view: "ticket", id: decodeURIComponent(ticket[1]) };
  return { view: "queues" };
}

function useRoute(): Route {
  const [route, setRoute] = useState(() => parse(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parse(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
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
      onLogin(await probeRole());
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
    probeRole()
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
  return (
    <>
      <header>
        <a class="brand" href="#/queues">Asyncgate</a>
        <nav>
          <a href="#/queues" aria-current={route.view === "queues" ? "page" : undefined}>Queues</a>
        </nav>
        <OpenTicket />
        <button class="logout" onClick={logout}>Log out</button>
      </header>
      <main>
        {route.view === "ticket" ? <TicketView id={route.id} role={role} /> : <Queues role={role} />}
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
