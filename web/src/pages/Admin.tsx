// Users (roles, quotas), API tokens, audit log.
import { useState, type FormEvent } from "react";
import { api, errorText, type Role, type User } from "../api";
import { ago, ErrorBox, useLoad } from "../util";

export default function Admin({ user, tab }: { user: User; tab: "users" | "tokens" | "audit" }) {
  if (tab === "tokens") return <Tokens user={user} />;
  if (user.role !== "admin") {
    return (
      <div className="empty">
        <h1>Admins only</h1>
        <p>Your role ({user.role}) cannot manage users or read the audit log.</p>
      </div>
    );
  }
  return tab === "users" ? <Users me={user} /> : <Audit />;
}

const num = (s: string) => (s.trim() === "" ? undefined : Number(s));

function Users({ me }: { me: User }) {
  const { data, error, reload } = useLoad(api.users, []);
  const [form, setForm] = useState({ name: "", role: "member" as Role, password: "", max_vms: "", max_memory_mib: "" });
  const [msg, setMsg] = useState<string | null>(null);
  const [err, setErr] = useState<unknown>(null);
  const [editing, setEditing] = useState<string | null>(null);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setErr(null);
    setMsg(null);
    try {
      const r = await api.createUser({
        name: form.name.trim(),
        role: form.role,
        password: form.password || undefined,
        max_vms: num(form.max_vms),
        max_memory_mib: num(form.max_memory_mib),
      });
      setMsg(
        r.password
          ? `User ${r.user.name} created. Generated password (shown once): ${r.password}`
          : `User ${r.user.name} created.`,
      );
      setForm({ name: "", role: "member", password: "", max_vms: "", max_memory_mib: "" });
      reload();
    } catch (x) {
      setErr(x);
    }
  };

  return (
    <section>
      <div className="pagehead">
        <h1>Users</h1>
      </div>
      <ErrorBox error={error} />
      {data && data.length ? (
        <table className="list" aria-label="Users">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Role</th>
              <th scope="col">Max VMs</th>
              <th scope="col">Max memory</th>
              <th scope="col">Created</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {data.map((u) =>
              editing === u.name ? (
                <EditUser key={u.name} u={u} done={() => (setEditing(null), reload())} />
              ) : (
                <tr key={u.name} data-user={u.name}>
                  <td>{u.name}</td>
                  <td>
                    <span className={`role role-${u.role}`}>{u.role}</span>
                  </td>
                  <td>{u.max_vms ?? "no limit"}</td>
                  <td>{u.max_memory_mib != null ? `${u.max_memory_mib} MiB` : "no limit"}</td>
                  <td>{ago(u.created_ms)}</td>
                  <td className="actions">
                    <button type="button" onClick={() => setEditing(u.name)} aria-label={`Edit ${u.name}`}>
                      Edit
                    </button>
                    <button
                      type="button"
                      className="danger"
                      disabled={u.name === me.name}
                      aria-label={`Remove ${u.name}`}
                      onClick={() => {
                        if (!window.confirm(`Remove user ${u.name}? Their tokens go; their labs stay.`)) return;
                        api.deleteUser(u.name).then(reload, setErr);
                      }}
                    >
                      Remove
                    </button>
                  </td>
                </tr>
              ),
            )}
          </tbody>
        </table>
      ) : data ? (
        <p className="empty">No users.</p>
      ) : null}
      <form className="card" onSubmit={create} aria-labelledby="newuser-h">
        <h2 id="newuser-h">Add a user</h2>
        <div className="row">
          <label>
            Name <input value={form.name} required pattern="[a-z0-9][a-z0-9._-]*" onChange={(e) => setForm({ ...form, name: e.target.value })} />
          </label>
          <label>
            Role{" "}
            <select value={form.role} onChange={(e) => setForm({ ...form, role: e.target.value as Role })}>
              <option value="member">member — own labs only</option>
              <option value="viewer">viewer — reads everything, changes nothing</option>
              <option value="admin">admin — everything</option>
            </select>
          </label>
          <label>
            Password{" "}
            <input
              type="password"
              autoComplete="new-password"
              minLength={8}
              placeholder="empty: generate one"
              value={form.password}
              onChange={(e) => setForm({ ...form, password: e.target.value })}
            />
          </label>
        </div>
        <div className="row">
          <label>
            Max VMs <input type="number" min={0} placeholder="no limit" value={form.max_vms} onChange={(e) => setForm({ ...form, max_vms: e.target.value })} />
          </label>
          <label>
            Max memory (MiB){" "}
            <input type="number" min={0} placeholder="no limit" value={form.max_memory_mib} onChange={(e) => setForm({ ...form, max_memory_mib: e.target.value })} />
          </label>
        </div>
        <button type="submit" className="primary">
          Add user
        </button>
        {msg ? (
          <p className="ok" role="status">
            {msg}
          </p>
        ) : null}
        {err ? (
          <p className="error" role="alert">
            {errorText(err)}
          </p>
        ) : null}
      </form>
    </section>
  );
}

function EditUser({ u, done }: { u: User; done: () => void }) {
  const [role, setRole] = useState<Role>(u.role);
  const [vms, setVms] = useState(u.max_vms?.toString() ?? "");
  const [mem, setMem] = useState(u.max_memory_mib?.toString() ?? "");
  const [pw, setPw] = useState("");
  const [err, setErr] = useState<unknown>(null);
  const save = async () => {
    try {
      const patch: Record<string, unknown> = {
        role,
        max_vms: vms.trim() === "" ? null : Number(vms),
        max_memory_mib: mem.trim() === "" ? null : Number(mem),
      };
      if (pw) patch.password = pw;
      await api.updateUser(u.name, patch);
      done();
    } catch (e) {
      setErr(e);
    }
  };
  return (
    <tr data-user={u.name} className="sel">
      <td>{u.name}</td>
      <td>
        <select aria-label={`Role of ${u.name}`} value={role} onChange={(e) => setRole(e.target.value as Role)}>
          <option value="admin">admin</option>
          <option value="member">member</option>
          <option value="viewer">viewer</option>
        </select>
      </td>
      <td>
        <input aria-label={`Max VMs of ${u.name}`} type="number" min={0} placeholder="no limit" value={vms} onChange={(e) => setVms(e.target.value)} />
      </td>
      <td>
        <input aria-label={`Max memory of ${u.name} (MiB)`} type="number" min={0} placeholder="no limit" value={mem} onChange={(e) => setMem(e.target.value)} />
      </td>
      <td>
        <input aria-label={`New password for ${u.name}`} type="password" placeholder="new password" value={pw} onChange={(e) => setPw(e.target.value)} />
      </td>
      <td className="actions">
        <button type="button" className="primary" onClick={() => void save()}>
          Save
        </button>
        <button type="button" onClick={done}>
          Cancel
        </button>
        {err ? (
          <span className="error" role="alert">
            {errorText(err)}
          </span>
        ) : null}
      </td>
    </tr>
  );
}

function Tokens({ user }: { user: User }) {
  const [all, setAll] = useState(false);
  const { data, error, reload } = useLoad(() => api.tokens(all), [all]);
  const [name, setName] = useState("");
  const [days, setDays] = useState("");
  const [secret, setSecret] = useState<string | null>(null);
  const [err, setErr] = useState<unknown>(null);
  const create = async (e: FormEvent) => {
    e.preventDefault();
    setErr(null);
    try {
      const r = await api.createToken(name.trim(), num(days));
      setSecret(r.secret);
      setName("");
      reload();
    } catch (x) {
      setErr(x);
    }
  };
  return (
    <section>
      <div className="pagehead">
        <h1>API tokens</h1>
        {user.role === "admin" ? (
          <label>
            <input type="checkbox" checked={all} onChange={(e) => setAll(e.target.checked)} /> everyone’s
          </label>
        ) : null}
      </div>
      <p className="muted">
        Tokens let scripts call the API as you (<code>Authorization: Bearer kbk_…</code>), with your role.
      </p>
      <ErrorBox error={error} />
      {data && data.length === 0 ? <p className="empty">No API tokens yet.</p> : null}
      {data && data.length ? (
        <table className="list" aria-label="API tokens">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">User</th>
              <th scope="col">Created</th>
              <th scope="col">Expires</th>
              <th scope="col">Last used</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {data.map((t) => (
              <tr key={t.id} className={t.revoked ? "muted" : undefined}>
                <td>{t.name}</td>
                <td>{t.user}</td>
                <td>{ago(t.created_ms)}</td>
                <td>{t.expires_ms ? new Date(t.expires_ms).toLocaleDateString() : "never"}</td>
                <td>{t.last_used_ms ? ago(t.last_used_ms) : "never"}</td>
                <td>
                  {t.revoked ? (
                    "revoked"
                  ) : (
                    <button type="button" className="danger" aria-label={`Revoke ${t.name}`} onClick={() => api.revokeToken(t.id).then(reload, setErr)}>
                      Revoke
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      <form className="card" onSubmit={create} aria-labelledby="newtoken-h">
        <h2 id="newtoken-h">New token</h2>
        <div className="row">
          <label>
            What it is for <input value={name} required onChange={(e) => setName(e.target.value)} />
          </label>
          <label>
            Expires after (days) <input type="number" min={1} max={3650} placeholder="never" value={days} onChange={(e) => setDays(e.target.value)} />
          </label>
        </div>
        <button type="submit" className="primary">
          Create token
        </button>
        {secret ? (
          <p className="ok" role="status">
            Copy it now, it is not shown again: <code className="secret">{secret}</code>
          </p>
        ) : null}
        {err ? (
          <p className="error" role="alert">
            {errorText(err)}
          </p>
        ) : null}
      </form>
    </section>
  );
}

function Audit() {
  const { data, error } = useLoad(api.audit, []);
  return (
    <section>
      <div className="pagehead">
        <h1>Audit log</h1>
      </div>
      <ErrorBox error={error} />
      {data && data.length === 0 ? <p className="empty">Nothing changed yet.</p> : null}
      {data && data.length ? (
        <table className="list" aria-label="Audit log">
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">User</th>
              <th scope="col">Request</th>
              <th scope="col">Status</th>
            </tr>
          </thead>
          <tbody>
            {data.map((a) => (
              <tr key={a.id}>
                <td>{new Date(a.ts_ms).toLocaleString()}</td>
                <td>{a.user}</td>
                <td>
                  <code>
                    {a.method} {a.path}
                  </code>
                </td>
                <td className={a.status >= 400 ? "bad" : undefined}>{a.status}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </section>
  );
}
