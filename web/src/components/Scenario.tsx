// Run a scenario (the YAML of `kobako scenario run`) against a running lab from the browser:
// live step lines, Cancel (faults are undone by the server), and the report (steps table,
// HTML report, JUnit XML) once it ends. The run is an operation of the server, so it goes on
// if this page is closed.
import { useEffect, useRef, useState } from "react";
import { api, saveBlob, type Operation } from "../api";
import { ErrorBox, StateBadge } from "../util";

const EXAMPLE = `name: slow-link
steps:
  - impair: { link: LINK, delay: 100ms }
  - name: RTT reflects the delay
    rtt: { from: NODE.VM, to: ADDRESS, count: 3 }
    expect: { min_ms: 190 }
`;

interface StepRow {
  index: number;
  id: string;
  name: string;
  action: string;
  status: string;
  expected: string | null;
  observed: string | null;
  message: string | null;
}

interface ScenarioResult {
  passed: boolean;
  junit: string;
  html: string;
  report: { scenario: string; duration_ms: number; steps: StepRow[]; cleanup: string[]; interrupted?: string };
}

export function ScenarioPanel({ lab, labUp }: { lab: string; labUp: boolean }) {
  const [text, setText] = useState("");
  const [file, setFile] = useState("scenario.yaml");
  const [op, setOp] = useState<Operation | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [cancelling, setCancelling] = useState(false);
  const poll = useRef<number>();
  const running = op?.state === "running";

  useEffect(() => () => window.clearTimeout(poll.current), []);
  // A run started earlier (another tab, before a reload) is picked up again: runs belong to
  // the server, so the panel follows the newest one of this lab that still runs.
  useEffect(() => {
    let live = true;
    api.operations().then(
      (ops) => {
        const o = ops.find((x) => x.kind === "lab.scenario" && x.lab === lab && x.state === "running");
        if (live && o) {
          setOp(o);
          follow(o.id);
        }
      },
      () => {},
    );
    return () => {
      live = false;
    };
  }, [lab]);
  const follow = (id: string) => {
    window.clearTimeout(poll.current);
    poll.current = window.setTimeout(async () => {
      try {
        const o = await api.operation(id);
        setOp(o);
        if (o.state === "running") follow(id);
        else setCancelling(false);
      } catch (e) {
        setError(e);
        follow(id);
      }
    }, 400);
  };
  const run = async () => {
    setError(null);
    setOp(null);
    try {
      const o = await api.runScenario(lab, text, file);
      setOp(o);
      follow(o.id);
    } catch (e) {
      setError(e);
    }
  };
  const cancel = async () => {
    if (!op) return;
    setCancelling(true);
    try {
      await api.cancelOperation(op.id);
    } catch (e) {
      setError(e);
      setCancelling(false);
    }
  };
  const loadFile = async (f: File | undefined) => {
    if (!f) return;
    setFile(f.name);
    setText(await f.text());
  };
  const res = op && op.state !== "running" ? (op.result as ScenarioResult | null) : null;
  const name = res?.report.scenario ?? "scenario";

  return (
    <section aria-label="Scenario" className="panel scenario" data-panel="scenario">
      <h2>Scenario</h2>
      <p className="muted small">
        Timed faults and checks against this lab, written as for <code>kobako scenario run</code>; every fault is undone at
        the end, or when the run is cancelled.
      </p>
      <label className="block">
        Scenario YAML
        <textarea
          rows={8}
          spellCheck={false}
          value={text}
          placeholder={EXAMPLE}
          onChange={(e) => setText(e.target.value)}
          disabled={running}
        />
      </label>
      <div className="actions">
        <label className="filepick">
          Load a file
          <input type="file" accept=".yaml,.yml,text/yaml" onChange={(e) => void loadFile(e.target.files?.[0])} disabled={running} />
        </label>
        <button type="button" className="primary" disabled={!labUp || running || !text.trim()} onClick={() => void run()}>
          Run scenario
        </button>
        {running ? (
          <button type="button" className="danger" disabled={cancelling} onClick={() => void cancel()}>
            {cancelling ? "Cancelling…" : "Cancel scenario"}
          </button>
        ) : null}
      </div>
      {!labUp ? <p className="muted small">Start the lab to run a scenario against it.</p> : null}
      <ErrorBox error={error} />
      {op ? (
        <div data-testid="scenario-run" data-state={op.state}>
          <p>
            Run <code>{op.id}</code> <StateBadge state={op.state} />
            {op.error ? <span className={op.state === "failed" ? "bad" : "muted"}> {op.error}</span> : null}
          </p>
          <ol className="log" aria-label="Scenario steps" aria-live="polite">
            {op.progress.map((l, i) => (
              <li key={i}>
                <time>{new Date(l.ts_ms).toLocaleTimeString()}</time> {l.message}
              </li>
            ))}
          </ol>
        </div>
      ) : null}
      {res ? (
        <>
          <table className="list" aria-label="Scenario report">
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">Step</th>
                <th scope="col">Status</th>
                <th scope="col">Expected</th>
                <th scope="col">Observed</th>
              </tr>
            </thead>
            <tbody>
              {res.report.steps.map((s) => (
                <tr key={s.id} data-step={s.index} data-status={s.status}>
                  <td>{s.index}</td>
                  <td>
                    {s.name} <span className="muted small">({s.action})</span>
                  </td>
                  <td className={s.status === "failed" ? "bad" : undefined}>{s.status}</td>
                  <td className="small">{s.expected ?? "–"}</td>
                  <td className="small">{s.observed ?? s.message ?? "–"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <div className="actions">
            <button type="button" onClick={() => saveBlob(new Blob([res.html], { type: "text/html" }), `${name}.html`)}>
              Download HTML report
            </button>
            <button type="button" onClick={() => saveBlob(new Blob([res.junit], { type: "application/xml" }), `${name}.junit.xml`)}>
              Download JUnit XML
            </button>
          </div>
        </>
      ) : null}
    </section>
  );
}
