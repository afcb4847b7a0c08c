import { lazy, Suspense, useEffect, useState } from "react";
import { currentUser, logout, onSession, type User } from "./api";
import { Link, navigate, usePath } from "./router";
import { subscribe } from "./events";
import { Login } from "./pages/Login";
import { Labs } from "./pages/Labs";

// The pages with the graph and terminals load their libraries on demand: the first page
// (login, lab list) stays small.
const LabView = lazy(() => import("./pages/LabView"));
const NewLab = lazy(() => import("./pages/NewLab"));
const Admin = lazy(() => import("./pages/Admin"));
const Functions = lazy(() => import("./pages/Functions"));

function useUser(): User | null {
  const [u, setU] = useState(currentUser());
  useEffect(() => onSession(() => setU(currentUser())), []);
  return u;
}

export function App() {
  const user = useUser();
  const path = usePath();

  // One event stream for the whole session: pages listen to it, none misses or replays events
  // when the user moves between them.
  useEffect(() => (user ? subscribe(() => {}) : undefined), [user]);

  useEffect(() => {
    if (!user && path !== "/login") navigate(`/login?next=${encodeURIComponent(path)}`, true);
  }, [user, path]);

  if (!user || path === "/login") {
    return <Login />;
  }
  let page;
  let m: RegExpMatchArray | null;
  if (path === "/" || path === "/labs") page = <Labs user={user} />;
  else if (path === "/labs/new") page = <NewLab user={user} />;
  else if ((m = path.match(/^\/labs\/([^/]+)\/edit$/))) page = <NewLab user={user} edit={decodeURIComponent(m[1])} />;
  else if ((m = path.match(/^\/labs\/([^/]+)$/))) page = <LabView user={user} name={decodeURIComponent(m[1])} />;
  else if (path === "/functions") page = <Functions user={user} />;
  else if (path === "/admin/users") page = <Admin user={user} tab="users" />;
  else if (path === "/tokens") page = <Admin user={user} tab="tokens" />;
  else if (path === "/admin/audit") page = <Admin user={user} tab="audit" />;
  else
    page = (
      <div className="empty">
        <h1>Not found</h1>
        <p>
          Nothing lives at <code>{path}</code>. <Link to="/labs">Back to the labs</Link>
        </p>
      </div>
    );
  const nav = (to: string, label: string) => (
    <Link to={to} aria-current={path === to || (to === "/labs" && path.startsWith("/labs")) ? "page" : undefined}>
      {label}
    </Link>
  );
  return (
    <div className="app">
      <header className="topbar">
        <Link to="/labs" className="brand">
          kobako
        </Link>
        <nav aria-label="Main">
          {nav("/labs", "Labs")}
          {nav("/functions", "Functions")}
          {nav("/tokens", "API tokens")}
          {user.role === "admin" ? nav("/admin/users", "Users") : null}
          {user.role === "admin" ? nav("/admin/audit", "Audit log") : null}
        </nav>
        <div className="who">
          <span data-testid="whoami">
            {user.name} <span className={`role role-${user.role}`}>{user.role}</span>
          </span>
          <button type="button" onClick={() => void logout().then(() => navigate("/login"))}>
            Log out
          </button>
        </div>
      </header>
      <main>
        <Suspense fallback={<p className="loading">Loading…</p>}>{page}</Suspense>
      </main>
    </div>
  );
}
