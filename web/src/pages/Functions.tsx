// Functions as VMs: deploy a handler once (booted and snapshotted as a warm VM), invoke it
// with a request on stdin (each invocation runs in a fresh clone that is destroyed after), see
// its answer, exit status and where the time went; delete it.
import { useEffect, useRef, useState, type FormEvent } from "react";
import { api, canWrite, waitOperation, type FunctionInfo, type ImageInfo, type InvocationResult, type User } from "../api";
import { ago, bytes, ErrorBox, useLoad } from "../util";

export default function Functions({ user }: { user: User }) {
  const { data, error, reload } = useLoad<FunctionInfo[]>(api.functions, []);
  const { data: images } = useLoad<ImageInfo[]>(api.images, []);
  const write = canWrite(user);
  const [form, setForm] = useState({ name: "", run: "", image: "tiny", memory: "128M", timeout_secs: 30, concurrency: 2 });
  const [deploying, setDeploying] = useState<string | null>(null);
  const [deployError, setDeployError] = useState<unknown>(null);
  const [open, setOpen] = useState<string | null>(null);
  const alive = useRef(true);
  useEffect(() => () => void (alive.current = false), []);

  const deploy = async (e: FormEvent) => {
    e.preventDefault();
    setDeployError(null);
    setDeploying(form.name);
    try {
      const op = await api.deployFunction(form);
      if (!(await waitOperation(op.id, "deploy", () => alive.current))) return;
      setOpen(form.name);
      setForm((f) => ({ ...f, name: "", run: "" }));
    } catch (err) {
      setDeployError(err);
    } finally {
      if (alive.current) {
        setDeploying(null);
        reload();
      }
    }
  };
  const del = async (name: string) => {
    if (!window.confirm(`Delete function ${name}? Its warm snapshot is removed.`)) return;
    try {
      await api.deleteFunction(name);
    } catch (err) {
      setDeployError(err);
    }
    reload();
  };
  const set = (k: keyof typeof form) => (e: { target: { value: string } }) =>
    setForm((f) => ({ ...f, [k]: typeof f[k] === "number" ? Number(e.target.value) : e.target.value }));

  return (
    <section className="functions">
      <div className="pagehead">
        <h1>Functions</h1>
        <span className="muted">
          A handler deployed once as a warm snapshot; every invocation runs in a fresh clone of it, destroyed afterwards.
        </span>
      </div>
      <ErrorBox error={error} />
      {data && data.length === 0 ? <p className="muted">No functions yet.</p> : null}
      {data && data.length > 0 ? (
        <table className="list" aria-label="Functions">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Handler</th>
              <th scope="col">Image</th>
              <th scope="col">Limits</th>
              <th scope="col">Snapshot</th>
              <th scope="col">Owner</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {data.map((f) => (
              <tr key={f.name} data-function={f.name} className={open === f.name ? "sel" : undefined}>
                <td>{f.name}</td>
                <td>
                  <code>{f.run}</code>
                </td>
                <td>
                  {f.image} · {f.memory_mib} MiB
                </td>
                <td>
                  {f.concurrency} at once · {f.timeout_secs} s
                </td>
                <td className="small">
                  {bytes(f.snapshot_bytes)}, cold boot {f.boot_ms} ms, deployed {ago(f.deployed_ms)}
                </td>
                <td>{f.owner ?? "root (local)"}</td>
                <td>
                  {write ? (
                    <>
                      <button type="button" onClick={() => setOpen(open === f.name ? null : f.name)} aria-label={`Invoke ${f.name}`}>
                        Invoke…
                      </button>{" "}
                      <button type="button" className="danger" onClick={() => void del(f.name)} aria-label={`Delete function ${f.name}`}>
                        Delete
                      </button>
                    </>
                  ) : (
                    <span className="muted small">read only</span>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {open && data?.some((f) => f.name === open) ? <InvokePanel key={open} name={open} /> : null}
      {write ? (
        <form className="panel deploy" onSubmit={(e) => void deploy(e)} aria-label="Deploy a function">
          <h2>Deploy a function</h2>
          <div className="grid2">
            <label>
              Function name
              <input value={form.name} onChange={set("name")} pattern="[a-z0-9][a-z0-9\-]{0,31}" title="1-32 lowercase letters, digits or -" required />
            </label>
            <label>
              Image
              <select value={form.image} onChange={set("image")}>
                {(images ?? [{ name: "tiny" } as ImageInfo]).map((i) => (
                  <option key={i.name} value={i.name}>
                    {i.name}
                  </option>
                ))}
              </select>
            </label>
            <label className="wide">
              Handler (sh -c; stdin is the request, stdout the answer)
              <input value={form.run} onChange={set("run")} placeholder="tr a-z A-Z" required />
            </label>
            <label>
              Memory
              <input value={form.memory} onChange={set("memory")} />
            </label>
            <label>
              Timeout (s)
              <input type="number" min={1} value={form.timeout_secs} onChange={set("timeout_secs")} />
            </label>
            <label>
              Concurrency
              <input type="number" min={1} value={form.concurrency} onChange={set("concurrency")} />
            </label>
          </div>
          <div className="actions">
            <button type="submit" className="primary" disabled={!!deploying}>
              {deploying ? `Deploying ${deploying}… (boot and snapshot)` : "Deploy"}
            </button>
          </div>
          <ErrorBox error={deployError} />
        </form>
      ) : null}
    </section>
  );
}

function InvokePanel({ name }: { name: string }) {
  const [stdin, setStdin] = useState("");
  const [busy, setBusy] = useState(false);
  const [res, setRes] = useState<InvocationResult | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [wall, setWall] = useState<number | null>(null);
  const invoke = async () => {
    setBusy(true);
    setError(null);
    const t0 = performance.now();
    try {
      setRes(await api.invokeFunction(name, stdin));
      setWall(Math.round(performance.now() - t0));
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section className="panel invoke" data-panel="invoke" aria-label={`Invoke ${name}`}>
      <h2>Invoke {name}</h2>
      <label className="block">
        Request (stdin)
        <textarea rows={3} value={stdin} onChange={(e) => setStdin(e.target.value)} spellCheck={false} />
      </label>
      <div className="actions">
        <button type="button" className="primary" disabled={busy} onClick={() => void invoke()}>
          {busy ? "Running…" : "Run"}
        </button>
      </div>
      <ErrorBox error={error} />
      {res ? (
        <div data-testid="invocation" data-exit={res.exit}>
          <p>
            Exit <strong className={res.exit === 0 ? undefined : "bad"}>{res.exit}</strong>
            {res.timed_out ? <span className="bad"> (timed out)</span> : null} in clone <code>{res.clone}</code>
            {wall != null ? <span className="muted"> · {wall} ms in the browser</span> : null}
          </p>
          <h3>stdout</h3>
          <pre className="out" data-testid="stdout">
            {res.stdout}
          </pre>
          {res.stderr ? (
            <>
              <h3>stderr</h3>
              <pre className="out">{res.stderr}</pre>
            </>
          ) : null}
          <p className="muted small" data-testid="timings">
            {Object.entries(res.timings)
              .map(([k, v]) => `${k} ${v} ms`)
              .join(" · ")}
          </p>
        </div>
      ) : null}
    </section>
  );
}
