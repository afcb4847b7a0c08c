import { useRef } from "react";
import { api, canWrite, type User } from "../api";
import { Link } from "../router";
import { ago, ErrorBox, StateBadge, useEvents, useLoad } from "../util";

export function Labs({ user }: { user: User }) {
  const { data, error, reload } = useLoad(api.labs, []);
  const timer = useRef<number>();
  useEvents((e) => {
    if (e.kind.startsWith("lab.") || e.kind === "vm.state") {
      window.clearTimeout(timer.current);
      timer.current = window.setTimeout(reload, 150);
    }
  });
  return (
    <section>
      <div className="pagehead">
        <h1>Labs</h1>
        {canWrite(user) ? (
          <Link to="/labs/new" className="button primary">
            New lab
          </Link>
        ) : null}
      </div>
      <ErrorBox error={error} />
      {data === null && !error ? <p className="loading">Loading labs…</p> : null}
      {data && data.length === 0 ? (
        <div className="empty">
          <p>
            <strong>No labs yet.</strong>{" "}
            {canWrite(user)
              ? "Create one from a template or a lab file with “New lab”."
              : user.role === "viewer"
                ? "Labs that others create will show up here."
                : ""}
          </p>
        </div>
      ) : null}
      {data && data.length > 0 ? (
        <table className="list" aria-label="Labs">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">VMs ready</th>
              <th scope="col">Owner</th>
              <th scope="col">Changed</th>
            </tr>
          </thead>
          <tbody>
            {data.map((l) => (
              <tr key={l.name} data-lab={l.name}>
                <td>
                  <Link to={`/labs/${encodeURIComponent(l.name)}`}>{l.name}</Link>
                </td>
                <td>
                  <StateBadge state={l.state} />
                  {l.reason ? <span className="muted small"> {l.reason}</span> : null}
                </td>
                <td>
                  {l.vms_ready} / {l.vm_count}
                </td>
                <td>{l.owner ?? <span className="muted">root (local)</span>}</td>
                <td>{ago(l.updated_ms)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </section>
  );
}
