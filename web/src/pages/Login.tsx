import { useEffect, useState, type FormEvent } from "react";
import { errorText, login } from "../api";
import { navigate } from "../router";

export function Login() {
  const [username, setUser] = useState("");
  const [password, setPw] = useState("");
  const [err, setErr] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  // OpenID Connect, when the server has it (`kobako serve --oidc-issuer ...`).
  const [sso, setSso] = useState<{ issuer: string; login_url: string } | null>(null);
  useEffect(() => {
    fetch("/api/v1/auth/oidc")
      .then((r) => (r.ok ? r.json() : null))
      .then((v) => {
        if (v && v.enabled && v.login_url) setSso({ issuer: v.issuer, login_url: v.login_url });
      })
      .catch(() => undefined);
  }, []);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setErr(null);
    try {
      await login(username.trim(), password);
      const next = new URLSearchParams(location.search).get("next");
      navigate(next && next.startsWith("/") && next !== "/login" ? next : "/labs", true);
    } catch (x) {
      setErr(errorText(x));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="login">
      <form onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">kobako</h1>
        <p className="muted">Log in to see and operate your labs.</p>
        <label htmlFor="username">User name</label>
        <input id="username" autoComplete="username" value={username} onChange={(e) => setUser(e.target.value)} required autoFocus />
        <label htmlFor="password">Password</label>
        <input
          id="password"
          type="password"
          autoComplete="current-password"
          value={password}
          onChange={(e) => setPw(e.target.value)}
          required
        />
        {err ? (
          <p className="error" role="alert">
            {err}
          </p>
        ) : null}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Logging in…" : "Log in"}
        </button>
        {sso ? (
          <a className="button" href={sso.login_url}>
            Sign in with {hostOf(sso.issuer)}
          </a>
        ) : null}
        <p className="muted small">
          First start: <code>kobako serve</code> prints the <code>admin</code> password (also in
          <code> /var/lib/kobako/server/initial-admin-password</code>).
        </p>
      </form>
    </main>
  );
}

function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}
