// A lab's checkpoints: take one ("stage 2 starts here"), bring the lab back to one, delete.
// Taking and restoring are operations of the server; this panel follows them to their end.
import { useEffect, useRef, useState, type FormEvent } from "react";
import { api, waitOperation, type CheckpointInfo } from "../api";
import { ago, bytes, ErrorBox, useLoad } from "../util";

export function CheckpointPanel({
  lab,
  labUp,
  write,
  onChanged,
}: {
  lab: string;
  labUp: boolean;
  write: boolean;
  onChanged: () => void;
}) {
  const { data: list, error: listError, reload } = useLoad<CheckpointInfo[]>(() => api.checkpoints(lab), [lab]);
  const [name, setName] = useState("");
  const [busy, setBusy] = useState<string | null>(null);
  const [msg, setMsg] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const alive = useRef(true);
  useEffect(() => () => void (alive.current = false), []);

  // Runs an operation to its end (polling it), then reloads the list and the lab.
  const follow = async (what: string, start: () => Promise<{ id: string }>, done: string) => {
    setBusy(what);
    setError(null);
    setMsg(null);
    try {
      const op = await start();
      if (!(await waitOperation(op.id, what, () => alive.current))) return;
      setMsg(done);
    } catch (e) {
      setError(e);
    } finally {
      if (alive.current) {
        setBusy(null);
        reload();
        onChanged();
      }
    }
  };
  const take = (e: FormEvent) => {
    e.preventDefault();
    const n = name.trim();
    void follow(`checkpoint ${n}`, () => api.createCheckpoint(lab, n), `checkpoint ${n} taken`).then(() => setName(""));
  };
  const restore = (n: string) => {
    if (!window.confirm(`Bring lab ${lab} back to checkpoint ${n}? Its VMs continue from there; what changed since is lost.`)) return;
    void follow(`restore ${n}`, () => api.restoreCheckpoint(lab, n), `lab restored to ${n}`);
  };
  const del = async (n: string) => {
    if (!window.confirm(`Delete checkpoint ${n}?`)) return;
    setError(null);
    try {
      await api.deleteCheckpoint(lab, n);
      setMsg(`checkpoint ${n} deleted`);
    } catch (e) {
      setError(e);
    }
    reload();
  };

  return (
    <section aria-label="Checkpoints" className="panel checkpoints" data-panel="checkpoints">
      <h2>Checkpoints</h2>
      <p className="muted small">
        A checkpoint keeps every VM's memory, devices and disks and the links' states and impairments; restoring brings the
        whole lab back to that moment.
      </p>
      {write ? (
        <form className="actions" onSubmit={take}>
          <label>
            Checkpoint name{" "}
            <input
              value={name}
              onChange={(e) => setName(e.target.value)}
              placeholder="stage-2"
              pattern="[A-Za-z0-9_][A-Za-z0-9_\-]{0,47}"
              title="1-48 letters, digits, - or _"
              disabled={!!busy}
            />
          </label>
          <button type="submit" className="primary" disabled={!labUp || !!busy || !name.trim()}>
            Checkpoint now
          </button>
          {!labUp ? <span className="muted small">Start the lab to checkpoint it.</span> : null}
        </form>
      ) : null}
      {busy ? (
        <p className="muted" role="status">
          {busy}…
        </p>
      ) : msg ? (
        <p className="ok" role="status">
          {msg}
        </p>
      ) : null}
      <ErrorBox error={error ?? listError} />
      {list && list.length ? (
        <table className="list" aria-label="Checkpoint list">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Taken</th>
              <th scope="col">VMs</th>
              <th scope="col">Size</th>
              <th scope="col">Guests paused</th>
              {write ? <th scope="col">Actions</th> : null}
            </tr>
          </thead>
          <tbody>
            {list.map((c) => (
              <tr key={c.name} data-checkpoint={c.name}>
                <td>{c.name}</td>
                <td>{ago(c.created_ms)}</td>
                <td>{c.vms}</td>
                <td>{bytes(c.bytes)}</td>
                <td>{c.paused_ms} ms</td>
                {write ? (
                  <td>
                    <button type="button" disabled={!!busy} onClick={() => restore(c.name)} aria-label={`Restore ${c.name}`}>
                      Restore
                    </button>{" "}
                    <button type="button" className="danger" disabled={!!busy} onClick={() => void del(c.name)} aria-label={`Delete checkpoint ${c.name}`}>
                      Delete
                    </button>
                  </td>
                ) : null}
              </tr>
            ))}
          </tbody>
        </table>
      ) : list ? (
        <p className="muted small">No checkpoints of this lab yet.</p>
      ) : null}
    </section>
  );
}
