// One lab: its topology with live VM states, operations (up/down/restart/delete), VM details
// with console and shell, and per-link controls (cut/heal, impairment, RTT measurement).
import { useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import {
  api,
  canWrite,
  download,
  errorText,
  type CaptureInfo,
  type LabDetail,
  type Layout,
  type LinkInfo,
  type MemberOp,
  type User,
  type VmInfo,
} from "../api";
import type { KEvent } from "../events";
import { specTopology } from "../labfile";
import { impairText, Topology, type MenuItem, type Positions, type Rates, type Selection, type VmLive } from "../components/Topology";
import { Terminal } from "../components/Terminal";
import { ScenarioPanel } from "../components/Scenario";
import { CheckpointPanel } from "../components/Checkpoints";
import { Link, navigate } from "../router";
import { ago, bytes, ErrorBox, StateBadge, useEvents, useLoad } from "../util";

/** Every 2 s while the lab is up: each VM interface's traffic in bytes/s since the last poll
 * (`node.vm:iface` → rates), drawn on the topology's edges. */
function useRates(lab: string, up: boolean): Rates | undefined {
  const [rates, setRates] = useState<Rates | undefined>(undefined);
  useEffect(() => {
    if (!up) {
      setRates(undefined);
      return;
    }
    let prev: { t: number; c: Map<string, { s: number; r: number }> } | null = null;
    let alive = true;
    const poll = async () => {
      try {
        const now = performance.now();
        const list = await api.counters(lab);
        if (!alive) return;
        const c = new Map(list.map((x) => [`${x.vm}:${x.iface}`, { s: x.sent_bytes, r: x.received_bytes }]));
        if (prev) {
          const dt = Math.max(0.001, (now - prev.t) / 1000);
          const m: Rates = new Map();
          for (const [k, v] of c) {
            const p = prev.c.get(k);
            // A restarted VM's port starts again from zero: no rate until the next poll.
            if (p && v.s >= p.s && v.r >= p.r) m.set(k, { sent: (v.s - p.s) / dt, received: (v.r - p.r) / dt });
          }
          setRates(m);
        }
        prev = { t: now, c };
      } catch {
        // The lab went down between polls, or the server is away: keep the last figures.
      }
    };
    void poll();
    const id = window.setInterval(() => void poll(), 2000);
    return () => {
      alive = false;
      window.clearInterval(id);
    };
  }, [lab, up]);
  return rates;
}

interface OpLine {
  ts: number;
  text: string;
  failed?: boolean;
}

export default function LabView({ user, name }: { user: User; name: string }) {
  const { data: lab, error, reload, setData } = useLoad(() => api.lab(name), [name]);
  // Where the boxes were left (saved per lab by the server); drawn once it is known.
  const { data: layout, error: layoutError } = useLoad<Layout>(() => api.layout(name), [name]);
  const [layoutMsg, setLayoutMsg] = useState<string | null>(null);
  const [captureSeq, setCaptureSeq] = useState(0);
  const [sel, setSel] = useState<Selection>(null);
  const [term, setTerm] = useState<{ vm: string; mode: "console" | "shell" } | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [log, setLog] = useState<OpLine[]>([]);
  // The last vm.state event of each VM: when it was written and the state it set.
  const [eventTs, setEventTs] = useState<Map<string, { ts: number; state: string }>>(new Map());
  const [deleted, setDeleted] = useState(false);
  const rates = useRates(name, ["ready", "degraded", "starting"].includes(lab?.state ?? ""));
  const timer = useRef<number>();
  const write = canWrite(user);

  useEvents((e: KEvent) => {
    if (e.lab !== name) return;
    if (e.kind === "vm.state" && e.vm) {
      const st = String(e.data.state ?? "");
      const boot = typeof e.data.boot_ms === "number" ? e.data.boot_ms : null;
      // Shown at once from the event; the full reload below fills in the rest.
      setData((d: LabDetail | null) =>
        d
          ? {
              ...d,
              vms: d.vms.map((v) =>
                v.name === e.vm ? { ...v, state: st, boot_ms: boot ?? v.boot_ms, reason: (e.data.reason as string) ?? null } : v,
              ),
            }
          : d,
      );
      setEventTs((m) => new Map(m).set(e.vm!, { ts: e.ts_ms, state: st }));
    } else if (e.kind === "lab.state") {
      setData((d: LabDetail | null) => (d ? { ...d, state: String(e.data.state ?? d.state) } : d));
    } else if (e.kind === "op.progress") {
      setLog((l) => [...l.slice(-200), { ts: e.ts_ms, text: String(e.data.message ?? "") }]);
      if (/^capture /.test(String(e.data.message ?? ""))) setCaptureSeq((n) => n + 1);
    } else if (e.kind === "op.state") {
      const failed = e.data.state === "failed";
      setLog((l) => [
        ...l,
        { ts: e.ts_ms, text: `operation ${String(e.data.state)}${e.data.error ? ": " + String(e.data.error) : ""}`, failed },
      ]);
    } else if (e.kind === "lab.deleted") {
      setDeleted(true);
      return;
    }
    window.clearTimeout(timer.current);
    timer.current = window.setTimeout(reload, 300);
  });

  const topo = useMemo(() => (lab ? specTopology(lab.spec) : null), [lab?.spec]);
  const live = useMemo(() => {
    const m = new Map<string, VmLive>();
    for (const v of lab?.vms ?? []) {
      // The event's time only goes with the state that event set (a reload may show a newer
      // state before its own event arrives).
      const ev = eventTs.get(v.name);
      m.set(`${v.node}.${v.vm}`, {
        state: v.state,
        boot_ms: v.boot_ms,
        reason: v.reason,
        eventTs: ev && ev.state === v.state ? ev.ts : undefined,
      });
    }
    return m;
  }, [lab?.vms, eventTs]);
  const linkLive = useMemo(() => new Map((lab?.links ?? []).map((l) => [l.name, l])), [lab?.links]);

  if (deleted) {
    return (
      <div className="empty">
        <h1>Lab {name} was deleted</h1>
        <p>
          <Link to="/labs">Back to the labs</Link>
        </p>
      </div>
    );
  }
  if (error && !lab) {
    return (
      <section>
        <h1>Lab {name}</h1>
        <ErrorBox error={error} />
        <p>
          <Link to="/labs">Back to the labs</Link>
        </p>
      </section>
    );
  }
  if (!lab || !topo || (!layout && !layoutError)) return <p className="loading">Loading lab {name}…</p>;

  const running = lab.vms.some((v) => v.pid != null || v.state === "ready" || v.state === "agent_up" || v.state === "booting");
  const act = async (what: string, f: () => Promise<unknown>) => {
    setBusy(what);
    setActionError(null);
    try {
      await f();
    } catch (e) {
      setActionError(e);
    } finally {
      setBusy(null);
      reload();
    }
  };
  const op = (o: "up" | "down" | "restart") =>
    act(o, async () => {
      setLog((l) => [...l, { ts: Date.now(), text: `${o} requested` }]);
      await api.labOp(name, o);
    });
  const memberOp = (target: string, o: MemberOp) =>
    act(`${o} ${target}`, async () => {
      setLog((l) => [...l, { ts: Date.now(), text: `${o} ${target} requested` }]);
      await api.memberOp(name, target, o);
    });
  const saveLayout = (p: Positions) => {
    if (!write) return;
    api.saveLayout(name, p).then(
      () => setLayoutMsg("layout saved"),
      (e) => setLayoutMsg(`layout not saved: ${errorText(e)}`),
    );
  };
  const del = () => {
    if (!window.confirm(`Delete lab ${name}? Its lab file and state are removed.`)) return;
    void act("delete", async () => {
      await api.deleteLab(name);
      navigate("/labs");
    });
  };
  // The graph's right-click menus: what the side panel does, where the user is looking.
  const contextMenu = (s: NonNullable<Selection>): MenuItem[] => {
    if (s.kind === "vm") {
      const v = lab.vms.find((x) => `${x.node}.${x.vm}` === s.id);
      if (!v) return [];
      const on = v.state === "ready" || v.state === "agent_up" || v.state === "booting";
      const agent = v.state === "ready" || v.state === "agent_up";
      return [
        { label: "Open console", run: () => setTerm({ vm: v.name, mode: "console" }), disabled: !on },
        { label: "Open shell", run: () => setTerm({ vm: v.name, mode: "shell" }), disabled: !agent },
        { label: "Start", run: () => void memberOp(s.id, "start"), disabled: !!busy || !labUp || on },
        { label: "Restart", run: () => void memberOp(s.id, "restart"), disabled: !!busy || !labUp },
        { label: "Stop", run: () => void memberOp(s.id, "stop"), disabled: !!busy || !labUp || !on },
      ];
    }
    if (s.kind === "link") {
      const l = lab.links.find((x) => x.name === s.name);
      if (!l) return [];
      const linkAct = (what: string, f: () => Promise<unknown>) =>
        void act(what, async () => {
          await f();
          setLog((g) => [...g, { ts: Date.now(), text: `link ${l.name}: ${what}` }]);
        });
      return [
        l.up
          ? { label: "Cut link", run: () => linkAct("cut", () => api.linkState(lab.name, l.name, false)), disabled: !labUp }
          : { label: "Heal link", run: () => linkAct("healed", () => api.linkState(lab.name, l.name, true)), disabled: !labUp },
        {
          label: "Capture 30 s (pcapng)",
          run: () =>
            linkAct("capture started (30 s; download it from the link's panel)", async () => {
              await api.startCapture(lab.name, l.name, { duration_s: 30 });
              setCaptureSeq((n) => n + 1);
            }),
          disabled: !labUp,
        },
        { label: "Impair…", run: () => setSel({ kind: "link", name: l.name }) },
      ];
    }
    return [];
  };
  const selVm = sel?.kind === "vm" ? lab.vms.find((v) => `${v.node}.${v.vm}` === sel.id) : undefined;
  const selLink = sel?.kind === "link" ? lab.links.find((l) => l.name === sel.name) : undefined;
  const ready = lab.vms.filter((v) => v.state === "ready").length;
  const labUp = ["ready", "degraded", "starting"].includes(lab.state);

  return (
    <section className="labview">
      <div className="pagehead">
        <h1>
          {lab.name} <StateBadge state={lab.state} />
        </h1>
        <span className="muted">
          {ready} of {lab.vms.length} VMs ready · owner {lab.owner ?? "root (local)"}
          {lab.reason ? ` · ${lab.reason}` : ""}
        </span>
        {write ? (
          <div className="actions" role="group" aria-label="Lab actions">
            <button type="button" className={labUp ? undefined : "primary"} disabled={!!busy} onClick={() => void op("up")}>
              Start
            </button>
            <button type="button" disabled={!!busy} onClick={() => void op("restart")}>
              Restart
            </button>
            <button type="button" disabled={!!busy} onClick={() => void op("down")}>
              Stop
            </button>
            <button
              type="button"
              disabled={!!busy || running}
              title={running ? "Stop the lab first" : undefined}
              onClick={() => navigate(`/labs/${encodeURIComponent(name)}/edit`)}
            >
              Edit lab file
            </button>
            <button type="button" className="danger" disabled={!!busy || running} title={running ? "Stop the lab first" : undefined} onClick={del}>
              Delete
            </button>
          </div>
        ) : (
          <span className="readonly">read only</span>
        )}
      </div>
      <ErrorBox error={actionError} />
      {write ? (
        <p className="muted small layoutnote" role="status">
          Drag the node boxes (or select one and use the arrow keys) to arrange the drawing; it is kept for this lab
          {layoutMsg ? ` — ${layoutMsg}` : layout?.updated_ms ? ` — last arranged by ${layout.user ?? "?"} ${ago(layout.updated_ms)}` : ""}.
        </p>
      ) : null}
      <div className="labgrid">
        <Topology
          topo={topo}
          live={live}
          linkLive={linkLive}
          rates={rates}
          selection={sel}
          onSelect={setSel}
          positions={layout?.positions}
          onMoved={write ? saveLayout : undefined}
          menu={write ? contextMenu : undefined}
        />
        <aside className="side" aria-label="Details">
          {selVm ? (
            <VmPanel
              vm={selVm}
              nodeVms={lab.vms.filter((v) => v.node === selVm.node).length}
              labUp={labUp}
              write={write}
              busy={!!busy}
              onTerm={(mode) => setTerm({ vm: selVm.name, mode })}
              onOp={memberOp}
            />
          ) : selLink ? (
            <LinkPanel key={selLink.name} lab={lab} link={selLink} write={write} onChanged={reload} captureSeq={captureSeq} />
          ) : (
            <p className="muted">
              Select a VM or a link (click it in the graph, or Tab to it and press Enter, or use the lists below) to see and
              operate it.
            </p>
          )}
        </aside>
      </div>
      {term ? <Terminal key={`${term.vm}:${term.mode}`} vm={term.vm} mode={term.mode} onClose={() => setTerm(null)} /> : null}
      <div className="tables">
        <table className="list" aria-label="VMs">
          <thead>
            <tr>
              <th scope="col">VM</th>
              <th scope="col">State</th>
              <th scope="col">Boot</th>
              <th scope="col">Size</th>
              <th scope="col">Addresses</th>
            </tr>
          </thead>
          <tbody>
            {lab.vms.map((v) => (
              <tr key={v.name} data-vmrow={v.name} className={sel?.kind === "vm" && sel.id === `${v.node}.${v.vm}` ? "sel" : undefined}>
                <td>
                  <button type="button" className="linkish" onClick={() => setSel({ kind: "vm", id: `${v.node}.${v.vm}` })}>
                    {v.node}.{v.vm}
                  </button>
                </td>
                <td>
                  <StateBadge state={v.state} />
                  {v.reason ? <span className="muted small"> {v.reason}</span> : null}
                </td>
                <td>{v.boot_ms != null ? `${v.boot_ms} ms` : "–"}</td>
                <td>
                  {v.image} · {v.vcpus} vCPU · {v.memory_mib} MiB
                </td>
                <td className="small">{v.addresses.join(", ") || "–"}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {lab.links.length ? (
          <table className="list" aria-label="Links">
            <thead>
              <tr>
                <th scope="col">Link</th>
                <th scope="col">Ends</th>
                <th scope="col">State</th>
                <th scope="col">Impairment</th>
              </tr>
            </thead>
            <tbody>
              {lab.links.map((l) => (
                <tr key={l.name} data-linkrow={l.name}>
                  <td>
                    <button type="button" className="linkish" onClick={() => setSel({ kind: "link", name: l.name })}>
                      {l.name}
                    </button>
                  </td>
                  <td className="small">{l.endpoints.join(" ↔ ")}</td>
                  <td>{l.up ? "up" : <span className="bad">cut</span>}</td>
                  <td>{impairText(l.impairment) || "none"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : (
          <p className="muted">This lab has no point-to-point links.</p>
        )}
        <CheckpointPanel lab={name} labUp={labUp} write={write} onChanged={reload} />
        {write ? <ScenarioPanel lab={name} labUp={labUp} /> : null}
        <section aria-label="Activity" className="activity">
          <h2>Activity</h2>
          {log.length === 0 ? (
            <p className="muted small">Operations on this lab show their progress here.</p>
          ) : (
            <ol className="log" aria-live="polite">
              {log.map((l, i) => (
                <li key={i} className={l.failed ? "bad" : undefined}>
                  <time>{new Date(l.ts).toLocaleTimeString()}</time> {l.text}
                </li>
              ))}
            </ol>
          )}
          <p className="muted small">Lab created {ago(lab.created_ms)} from {lab.file ?? "a lab file"}.</p>
        </section>
      </div>
    </section>
  );
}

function VmPanel({
  vm,
  nodeVms,
  labUp,
  write,
  busy,
  onTerm,
  onOp,
}: {
  vm: VmInfo;
  nodeVms: number;
  labUp: boolean;
  write: boolean;
  busy: boolean;
  onTerm: (m: "console" | "shell") => void;
  onOp: (target: string, op: MemberOp) => void;
}) {
  // From the state (live from events); the pid is only as fresh as the last reload.
  const up = vm.state === "ready" || vm.state === "agent_up" || vm.state === "booting";
  const id = `${vm.node}.${vm.vm}`;
  const opButtons = (target: string, what: string, running: boolean) => (
    <div className="actions" role="group" aria-label={`${what} actions`}>
      <button type="button" disabled={busy || !labUp || running} onClick={() => onOp(target, "start")} aria-label={`Start ${what}`}>
        Start
      </button>
      <button type="button" disabled={busy || !labUp} onClick={() => onOp(target, "restart")} aria-label={`Restart ${what}`}>
        Restart
      </button>
      <button type="button" disabled={busy || !labUp || !running} onClick={() => onOp(target, "stop")} aria-label={`Stop ${what}`}>
        Stop
      </button>
    </div>
  );
  return (
    <div className="panel" data-panel="vm">
      <h2>VM {id}</h2>
      <dl>
        <dt>State</dt>
        <dd>
          <StateBadge state={vm.state} /> {vm.reason ?? ""}
        </dd>
        <dt>Boot time</dt>
        <dd>{vm.boot_ms != null ? `${vm.boot_ms} ms (process start to agent ready)` : "–"}</dd>
        <dt>Image</dt>
        <dd>{vm.image ?? "–"}</dd>
        <dt>Size</dt>
        <dd>
          {vm.vcpus} vCPU, {vm.memory_mib} MiB
        </dd>
        <dt>Addresses</dt>
        <dd>{vm.addresses.length ? vm.addresses.join(", ") : "–"}</dd>
        <dt>Full name</dt>
        <dd>
          <code>{vm.name}</code>
        </dd>
      </dl>
      {write ? (
        <>
          <div className="actions">
            <button type="button" disabled={!up} onClick={() => onTerm("console")}>
              Open console
            </button>
            <button type="button" disabled={vm.state !== "ready" && vm.state !== "agent_up"} onClick={() => onTerm("shell")}>
              Open shell
            </button>
          </div>
          <h3>This VM</h3>
          {opButtons(id, `VM ${id}`, up)}
          {nodeVms > 1 ? (
            <>
              <h3>
                Node {vm.node} ({nodeVms} VMs)
              </h3>
              {opButtons(vm.node, `node ${vm.node}`, true)}
            </>
          ) : null}
          {!labUp ? <p className="muted small">Start the lab to operate its VMs and open consoles.</p> : null}
        </>
      ) : null}
    </div>
  );
}

const IMPAIR_FIELDS: { key: "delay" | "jitter" | "loss" | "rate"; label: string; hint: string }[] = [
  { key: "delay", label: "Delay", hint: "e.g. 100ms" },
  { key: "jitter", label: "Jitter", hint: "e.g. 5ms" },
  { key: "loss", label: "Loss", hint: "e.g. 1%" },
  { key: "rate", label: "Rate", hint: "e.g. 10mbit" },
];

function fieldValue(imp: Record<string, unknown> | null, k: string): string {
  const v = imp?.[k];
  if (v == null) return "";
  if (typeof v === "object") return String((v as Record<string, unknown>).percent ?? "");
  return String(v);
}

function LinkPanel({
  lab,
  link,
  write,
  onChanged,
  captureSeq,
}: {
  lab: LabDetail;
  link: LinkInfo;
  write: boolean;
  onChanged: () => void;
  captureSeq: number;
}) {
  const [vals, setVals] = useState<Record<string, string>>(() =>
    Object.fromEntries(IMPAIR_FIELDS.map((f) => [f.key, fieldValue(link.impairment, f.key)])),
  );
  const [msg, setMsg] = useState<string | null>(null);
  const [err, setErr] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [rtt, setRtt] = useState<{ text: string; seq: number } | null>(null);

  const run = async (f: () => Promise<string | null>) => {
    setBusy(true);
    setErr(null);
    setMsg(null);
    try {
      setMsg(await f());
      onChanged();
    } catch (e) {
      setErr(e);
    } finally {
      setBusy(false);
    }
  };
  const apply = (e: FormEvent) => {
    e.preventDefault();
    const body = Object.fromEntries(Object.entries(vals).filter(([, v]) => v.trim() !== "").map(([k, v]) => [k, v.trim()]));
    void run(async () => {
      if (Object.keys(body).length === 0) {
        await api.clearImpair(lab.name, link.name);
        return "impairment cleared";
      }
      const r = await api.impair(lab.name, link.name, body);
      return `applied: ${impairText(r.impairment) || "none"}`;
    });
  };

  // RTT across the link: ping the far end's address from the near end, through the agent.
  const [endA, endB] = link.endpoints;
  const far = lab.vms.find((v) => `${v.node}.${v.vm}` === endB.split(":")[0]);
  const near = lab.vms.find((v) => `${v.node}.${v.vm}` === endA.split(":")[0]);
  const farAddr = far?.addresses.find((a) => a.startsWith(`${endB.split(":")[1]}:`))?.split(":")[1]?.split("/")[0];
  const measure = () =>
    void run(async () => {
      if (!near || !farAddr) throw new Error("the far end of this link has no IPv4 address to ping");
      const r = await api.exec(near.name, ["ping", "-c", "3", "-W", "2", farAddr], 20);
      const m = r.stdout.match(/= [\d.]+\/([\d.]+)\//);
      const text = m ? `RTT ${m[1]} ms (avg of 3 pings ${near.node}.${near.vm} → ${farAddr})` : `no answer from ${farAddr} (exit ${r.exit_code})`;
      setRtt((r) => ({ text, seq: (r?.seq ?? 0) + 1 }));
      return null;
    });

  return (
    <div className="panel" data-panel="link">
      <h2>Link {link.name}</h2>
      <p className="small">{link.endpoints.join(" ↔ ")}</p>
      <p>
        State: {link.up ? <strong>up</strong> : <strong className="bad">cut</strong>} · impairment:{" "}
        <span data-testid="impairment">{impairText(link.impairment) || "none"}</span>
      </p>
      {write ? (
        <>
          <div className="actions">
            {link.up ? (
              <button type="button" disabled={busy} onClick={() => void run(async () => (await api.linkState(lab.name, link.name, false), "link cut"))}>
                Cut link
              </button>
            ) : (
              <button type="button" disabled={busy} onClick={() => void run(async () => (await api.linkState(lab.name, link.name, true), "link healed"))}>
                Heal link
              </button>
            )}
            <button type="button" disabled={busy || !farAddr} onClick={measure}>
              Measure RTT
            </button>
          </div>
          <form onSubmit={apply} aria-labelledby="impair-h" className="impair">
            <h3 id="impair-h">Impairment (both directions)</h3>
            {IMPAIR_FIELDS.map((f) => (
              <label key={f.key}>
                {f.label}
                <input
                  name={f.key}
                  value={vals[f.key]}
                  placeholder={f.hint}
                  onChange={(e) => setVals({ ...vals, [f.key]: e.target.value })}
                />
              </label>
            ))}
            <div className="actions">
              <button type="submit" className="primary" disabled={busy}>
                Apply
              </button>
              <button
                type="button"
                disabled={busy}
                onClick={() => {
                  setVals({ delay: "", jitter: "", loss: "", rate: "" });
                  void run(async () => (await api.clearImpair(lab.name, link.name), "impairment cleared"));
                }}
              >
                Clear
              </button>
            </div>
          </form>
        </>
      ) : null}
      {rtt ? (
        <p data-testid="rtt" data-seq={rtt.seq} className="rtt" role="status">
          {rtt.text}
        </p>
      ) : null}
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
      <Captures lab={lab} link={link} write={write} seq={captureSeq} />
    </div>
  );
}

const ENDED: Record<string, string> = {
  duration: "time limit reached",
  packets: "packet limit reached",
  size: "size limit reached",
  stopped: "stopped",
};

/** Packet captures of one link: start one (bounded by time and packets), stop it, download. */
function Captures({ lab, link, write, seq }: { lab: LabDetail; link: LinkInfo; write: boolean; seq: number }) {
  const [n, setN] = useState(0);
  const { data, error } = useLoad(() => api.captures(lab.name), [lab.name, seq, n]);
  const [secs, setSecs] = useState("10");
  const [max, setMax] = useState("1000");
  const [err, setErr] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const mine = (data ?? []).filter((c) => c.link === link.name);
  const running = mine.some((c) => c.state === "running");
  // While one runs, its packet count is refreshed every second.
  useEffect(() => {
    if (!running) return;
    const t = window.setInterval(() => setN((x) => x + 1), 1000);
    return () => window.clearInterval(t);
  }, [running]);
  const run = async (f: () => Promise<unknown>) => {
    setBusy(true);
    setErr(null);
    try {
      await f();
    } catch (e) {
      setErr(e);
    } finally {
      setBusy(false);
      setN((x) => x + 1);
    }
  };
  const start = (e: FormEvent) => {
    e.preventDefault();
    void run(() => api.startCapture(lab.name, link.name, { duration_s: Number(secs), max_packets: Number(max) }));
  };
  const save = (c: CaptureInfo) =>
    void run(() => download(c.download.replace(/^\/api\/v1/, ""), `${c.lab}-${c.link}-${c.id}.pcapng`));
  return (
    <section className="captures" aria-labelledby="cap-h">
      <h3 id="cap-h">Packet capture</h3>
      {write ? (
        <form onSubmit={start} className="capform">
          <label>
            Seconds <input type="number" min={1} max={600} step="any" value={secs} required onChange={(e) => setSecs(e.target.value)} />
          </label>
          <label>
            Max packets <input type="number" min={1} max={1000000} value={max} required onChange={(e) => setMax(e.target.value)} />
          </label>
          <button type="submit" disabled={busy || running || !link.up}>
            Start capture
          </button>
        </form>
      ) : null}
      {err ? (
        <p className="error" role="alert">
          {errorText(err)}
        </p>
      ) : null}
      <ErrorBox error={error} />
      {data && mine.length === 0 ? (
        <p className="muted small">
          No captures of this link yet.{" "}
          {write ? "They see both directions at one end (no tools needed in the VMs) and download as pcapng for Wireshark." : ""}
        </p>
      ) : null}
      {mine.length ? (
        <ul className="caplist" aria-label={`Captures of link ${link.name}`}>
          {mine.map((c) => (
            <li key={c.id} data-capture={c.id} data-state={c.state}>
              <span>
                <StateBadge state={c.state} /> {c.packets} packets, {bytes(c.bytes)}
                <span className="muted small">
                  {" "}
                  · {new Date(c.started_ms).toLocaleTimeString()} · at {c.at.split(" ")[0]}
                  {c.ended_by ? ` · ${ENDED[c.ended_by] ?? c.ended_by}` : ""}
                  {c.error ? ` · ${c.error}` : ""}
                </span>
              </span>
              <span className="actions">
                {c.state === "running" && write ? (
                  <button type="button" disabled={busy} onClick={() => void run(() => api.stopCapture(lab.name, c.id))}>
                    Stop capture
                  </button>
                ) : null}
                <button type="button" disabled={busy} onClick={() => save(c)} aria-label={`Download capture ${c.id}`}>
                  Download
                </button>
              </span>
            </li>
          ))}
        </ul>
      ) : null}
    </section>
  );
}
