// Create a lab (from a template, a blank start, an uploaded or pasted lab file) or edit one:
// the lab file text is the model; the graph is drawn from it, and the graph's edits (add a VM,
// add a link, change a VM) are written back into it. The server validates it on save and its
// errors are shown at their lines.
import { useEffect, useMemo, useRef, useState, type ChangeEvent, type FormEvent } from "react";
import { api, ApiError, canWrite, saveBlob, type ImageInfo, type SpecError, type TemplateInfo, type User } from "../api";
import { addLink, addVm, draftTopology, parseDocument, removeItems, setVm, specToYaml, starter, type Topology as Topo } from "../labfile";
import { Topology, VM_DRAG, type Positions, type Selection } from "../components/Topology";
import { Link, navigate } from "../router";
import { ErrorBox } from "../util";

interface LineError {
  line: number;
  col: number;
  text: string;
}

function CodeEditor({
  value,
  onChange,
  errors,
  focusLine,
}: {
  value: string;
  onChange: (v: string) => void;
  errors: LineError[];
  focusLine: number | null;
}) {
  const ta = useRef<HTMLTextAreaElement>(null);
  const gutter = useRef<HTMLDivElement>(null);
  const lines = value.split("\n").length;
  const bad = new Map(errors.map((e) => [e.line, e.text]));
  useEffect(() => {
    if (focusLine == null || !ta.current) return;
    const t = ta.current;
    const idx = value.split("\n").slice(0, focusLine - 1).join("\n").length + (focusLine > 1 ? 1 : 0);
    t.focus();
    t.setSelectionRange(idx, idx);
    t.scrollTop = Math.max(0, (focusLine - 4) * 18);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [focusLine]);
  return (
    <div className="code">
      <div className="gutter" ref={gutter} aria-hidden="true">
        {Array.from({ length: lines }, (_, i) => (
          <div key={i} className={bad.has(i + 1) ? "bad" : undefined} title={bad.get(i + 1)}>
            {i + 1}
          </div>
        ))}
      </div>
      <textarea
        id="labfile"
        ref={ta}
        value={value}
        spellCheck={false}
        aria-label="Lab file (YAML)"
        aria-invalid={errors.length > 0}
        aria-describedby={errors.length ? "labfile-errors" : undefined}
        onChange={(e) => onChange(e.target.value)}
        onScroll={(e) => {
          if (gutter.current) gutter.current.scrollTop = e.currentTarget.scrollTop;
        }}
        onKeyDown={(e) => {
          // Tab indents (YAML); Escape then Tab leaves the editor.
          if (e.key === "Tab" && !e.shiftKey && !(e.currentTarget.dataset.escaped === "1")) {
            e.preventDefault();
            const t = e.currentTarget;
            const s = t.selectionStart;
            onChange(value.slice(0, s) + "  " + value.slice(t.selectionEnd));
            requestAnimationFrame(() => t.setSelectionRange(s + 2, s + 2));
          }
          e.currentTarget.dataset.escaped = e.key === "Escape" ? "1" : "0";
        }}
      />
    </div>
  );
}

export default function NewLab({ user, edit }: { user: User; edit?: string }) {
  const [text, setText] = useState("");
  const [name, setName] = useState("");
  const [templates, setTemplates] = useState<TemplateInfo[]>([]);
  const [images, setImages] = useState<ImageInfo[]>([]);
  const [serverErrors, setServerErrors] = useState<LineError[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [sel, setSel] = useState<Selection>(null);
  const [focusLine, setFocusLine] = useState<number | null>(null);
  const [original, setOriginal] = useState<string | null>(null);
  // Where the user put the boxes: saved with the lab when it is created.
  const [positions, setPositions] = useState<Positions | null>(null);
  const [layoutReady, setLayoutReady] = useState(!edit);

  useEffect(() => {
    api.templates().then(setTemplates, setError);
    api.images().then(setImages, () => setImages([]));
    if (edit) {
      api.lab(edit).then((d) => {
        const y = specToYaml(d.spec);
        setText(y);
        setOriginal(y);
        setName(d.name);
      }, setError);
      api.layout(edit).then(
        (l) => {
          if (Object.keys(l.positions).length) setPositions(l.positions);
          setLayoutReady(true);
        },
        () => setLayoutReady(true),
      );
    } else {
      setText(starter(`ui-lab-${Math.random().toString(36).slice(2, 6)}`));
    }
  }, [edit]);

  // The draft drawn: YAML syntax errors are shown at their line like the server's.
  const { topo, yamlErrors } = useMemo(() => {
    const doc = parseDocument(text, { prettyErrors: true });
    try {
      return { topo: draftTopology(doc, templates), yamlErrors: [] as LineError[] };
    } catch {
      return {
        topo: null as Topo | null,
        yamlErrors: doc.errors.map((e) => ({
          line: e.linePos?.[0].line ?? 1,
          col: e.linePos?.[0].col ?? 1,
          text: e.message.split("\n")[0],
        })),
      };
    }
  }, [text, templates]);
  const [lastTopo, setLastTopo] = useState<Topo | null>(null);
  useEffect(() => {
    if (topo) setLastTopo(topo);
  }, [topo]);
  const shown = topo ?? lastTopo;
  const errors = yamlErrors.length ? yamlErrors : serverErrors;

  useEffect(() => {
    if (topo && topo.name !== name && !edit) setName(topo.name);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [topo?.name]);

  if (!canWrite(user)) {
    return (
      <div className="empty">
        <h1>Read only</h1>
        <p>Viewers cannot create or change labs. <Link to="/labs">Back to the labs</Link></p>
      </div>
    );
  }

  const change = (f: (doc: ReturnType<typeof parseDocument>) => void) => {
    const doc = parseDocument(text);
    if (doc.errors.length) {
      setError(new Error("fix the lab file's syntax first (see the marked line)"));
      return;
    }
    try {
      f(doc);
      setText(doc.toString({ lineWidth: 0 }));
      setServerErrors([]);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };

  const rename = (n: string) => {
    setName(n);
    change((d) => d.set("name", n));
  };

  const fromTemplate = (t: string) => {
    const n = name || "ui-lab";
    setText(t ? starter(n, t) : starter(n));
    setServerErrors([]);
    setSel(null);
  };

  const upload = (e: ChangeEvent<HTMLInputElement>) => {
    const f = e.target.files?.[0];
    if (!f) return;
    f.text().then((t) => {
      setText(t);
      setServerErrors([]);
    }, setError);
  };

  const submit = async (start: boolean) => {
    setBusy(true);
    setError(null);
    setServerErrors([]);
    try {
      if (edit && (name || edit) === edit) {
        // Same name: the lab's file is replaced in place; its checkpoints, layout and events stay.
        await api.replaceLab(edit, text, `${edit}.yaml`);
      } else if (edit) {
        // Renamed: the old lab is deleted and the new one created (the old one is created
        // again from its file if the new file is refused).
        await api.deleteLab(edit);
        try {
          await api.createLab(text, `${name || edit}.yaml`);
        } catch (e) {
          if (original) await api.createLab(original, `${edit}.yaml`).catch(() => {});
          throw e;
        }
      } else {
        await api.createLab(text, `${name || "lab"}.yaml`);
      }
      if (positions) await api.saveLayout(name, positions).catch(() => {});
      if (start) await api.labOp(name, "up");
      navigate(`/labs/${encodeURIComponent(name)}`);
    } catch (e) {
      if (e instanceof ApiError && Array.isArray(e.details)) {
        // A 422 invalid_lab carries located errors; other refusals (an unknown image, a host
        // path) carry lines of text or objects without a position: listed without one.
        setServerErrors(
          (e.details as unknown[]).map((d) => {
            const se = d as SpecError;
            if (se && typeof se === "object" && se.pos) {
              return { line: se.pos.line, col: se.pos.col, text: `${se.path}: ${se.message}${se.fix ? ` — ${se.fix}` : ""}` };
            }
            return { line: 0, col: 0, text: typeof d === "string" ? d : JSON.stringify(d) };
          }),
        );
        setError(new Error(e.message));
      } else setError(e);
    } finally {
      setBusy(false);
    }
  };

  const download = () => saveBlob(new Blob([text], { type: "application/yaml" }), `${name || "lab"}.yaml`);

  const vmIds = shown ? shown.nodes.flatMap((n) => n.vms.map((v) => `${n.name}.${v.name}`)) : [];
  const selVm =
    sel?.kind === "vm" && shown
      ? shown.nodes.flatMap((n) => n.vms).find((v) => `${v.node}.${v.name}` === sel.id)
      : undefined;

  return (
    <section className="editor">
      <div className="pagehead">
        <h1>{edit ? `Edit lab ${edit}` : "New lab"}</h1>
        <div className="actions">
          <button type="button" onClick={download}>
            Download lab file
          </button>
          {edit ? (
            <button type="button" className="primary" disabled={busy} onClick={() => void submit(false)}>
              Save lab
            </button>
          ) : (
            <>
              <button type="button" disabled={busy} onClick={() => void submit(false)}>
                Create lab
              </button>
              <button type="button" className="primary" disabled={busy} onClick={() => void submit(true)}>
                Create and start
              </button>
            </>
          )}
        </div>
      </div>
      {edit ? (
        <p className="muted small">
          Saving replaces the lab with this file; the lab must be down (its VMs are created again on the next start).
        </p>
      ) : null}
      <div className="sources">
        <label>
          Lab name{" "}
          <input value={name} onChange={(e) => rename(e.target.value)} pattern="[a-z0-9][a-z0-9-]*" aria-describedby="name-help" />
        </label>
        <span id="name-help" className="muted small">
          a–z, 0–9 and -
        </span>
        {!edit ? (
          <>
            <label>
              Start from{" "}
              <select aria-label="Start from" defaultValue="" onChange={(e) => fromTemplate(e.target.value)}>
                <option value="">two tiny VMs and a link</option>
                {templates.map((t) => (
                  <option key={t.name} value={t.name}>
                    template {t.name}
                    {t.description ? ` — ${t.description}` : ""}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Upload a lab file <input type="file" accept=".yaml,.yml,.json,text/yaml" onChange={upload} />
            </label>
          </>
        ) : null}
      </div>
      <ErrorBox error={error} />
      <div className="editgrid">
        <div className="pane">
          <h2>Lab file</h2>
          <CodeEditor value={text} onChange={(v) => { setText(v); setServerErrors([]); }} errors={errors} focusLine={focusLine} />
          {errors.length ? (
            <ul id="labfile-errors" className="errors" aria-label="Problems in the lab file">
              {errors.map((e, i) => (
                <li key={i}>
                  {e.line > 0 ? (
                    <>
                      <button type="button" className="linkish" onClick={() => setFocusLine(e.line)}>
                        line {e.line}, column {e.col}
                      </button>
                      :{" "}
                    </>
                  ) : null}
                  {e.text}
                </li>
              ))}
            </ul>
          ) : null}
        </div>
        <div className="pane">
          <h2>Topology</h2>
          {shown && layoutReady ? (
            <Topology
              topo={shown}
              selection={sel}
              onSelect={setSel}
              onConnect={(a, b) => change((d) => addLink(d, shown, a, b))}
              onDelete={(vms, links) => change((d) => removeItems(d, shown, vms, links))}
              positions={positions ?? undefined}
              onMoved={setPositions}
              onDropVm={(node, at) => {
                // Dropped on a node box: one more VM there; elsewhere: a new node with one VM.
                const names = new Set(shown.nodes.map((n) => n.name));
                let n = node;
                if (!n) {
                  let k = shown.nodes.length + 1;
                  while (names.has(`n${k}`)) k++;
                  n = `n${k}`;
                  // The box's header where it was dropped.
                  setPositions((p) => ({ ...(p ?? {}), [`node:${n}`]: { x: Math.round(at.x - 107), y: Math.round(at.y - 15) } }));
                }
                const taken = new Set(shown.nodes.find((x) => x.name === n)?.vms.map((v) => v.name) ?? []);
                let v = 1;
                while (taken.has(`vm${v}`)) v++;
                const target = n;
                change((d) => addVm(d, target, `vm${v}`, { image: "tiny", vcpus: 1, memory: "128M" }));
              }}
            />
          ) : (
            <p className="empty">Nothing to draw yet.</p>
          )}
          <p className="muted small palette">
            <span
              className="paletteitem"
              draggable
              onDragStart={(e) => {
                e.dataTransfer.setData(VM_DRAG, "vm");
                e.dataTransfer.effectAllowed = "copy";
              }}
              title="Drag onto a node box to add a VM to it, or onto empty space for a new node"
            >
              + VM
            </span>{" "}
            Drag this onto a node (or empty space) to add a VM; drag from a VM’s right handle to another VM to link
            them; or use the forms below.
          </p>
          <div className="forms">
            {selVm ? (
              <VmForm
                // A new form when the file changes what it shows (edited text, another file).
                key={`${selVm.node}.${selVm.name}:${selVm.image}:${selVm.vcpus}:${selVm.memory}`}
                title={`VM ${selVm.node}.${selVm.name}`}
                images={images}
                init={{ node: selVm.node, name: selVm.name, image: selVm.image, vcpus: selVm.vcpus, memory: selVm.memory }}
                fixedName
                submitLabel="Apply to lab file"
                onSubmit={(v) => change((d) => setVm(d, v.node, v.name, v))}
              />
            ) : null}
            <VmForm
              title="Add a VM"
              images={images}
              init={{ node: shown?.nodes[0]?.name ?? "n1", name: "", image: "tiny", vcpus: 1, memory: "128M" }}
              submitLabel="Add VM"
              onSubmit={(v) => change((d) => addVm(d, v.node, v.name, v))}
            />
            <LinkForm vms={vmIds} onSubmit={(a, b) => shown && change((d) => addLink(d, shown, a, b))} />
          </div>
        </div>
      </div>
    </section>
  );
}

interface VmVals {
  node: string;
  name: string;
  image: string;
  vcpus: number;
  memory: string;
}

function VmForm({
  title,
  init,
  images,
  fixedName,
  submitLabel,
  onSubmit,
}: {
  title: string;
  init: VmVals;
  images: ImageInfo[];
  fixedName?: boolean;
  submitLabel: string;
  onSubmit: (v: VmVals) => void;
}) {
  const [v, setV] = useState(init);
  const id = title.replace(/[^a-z0-9]/gi, "-").toLowerCase();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    onSubmit(v);
    if (!fixedName) setV({ ...v, name: "" });
  };
  return (
    <form className="card" onSubmit={submit} aria-labelledby={`${id}-h`}>
      <h3 id={`${id}-h`}>{title}</h3>
      {!fixedName ? (
        <div className="row">
          <label>
            Node <input value={v.node} required pattern="[a-z0-9][a-z0-9-]*" onChange={(e) => setV({ ...v, node: e.target.value })} />
          </label>
          <label>
            VM name <input value={v.name} required pattern="[a-z0-9][a-z0-9-]*" onChange={(e) => setV({ ...v, name: e.target.value })} />
          </label>
        </div>
      ) : null}
      <div className="row">
        <label>
          Image{" "}
          <input list={`${id}-images`} value={v.image} required onChange={(e) => setV({ ...v, image: e.target.value })} />
          <datalist id={`${id}-images`}>
            {["tiny", ...images.map((i) => i.name).filter((n) => n !== "tiny")].map((n) => (
              <option key={n} value={n} />
            ))}
          </datalist>
        </label>
        <label>
          vCPUs <input type="number" min={1} max={64} value={v.vcpus} onChange={(e) => setV({ ...v, vcpus: Number(e.target.value) })} />
        </label>
        <label>
          Memory <input value={v.memory} required pattern="[0-9]+[KMGT]?" onChange={(e) => setV({ ...v, memory: e.target.value })} />
        </label>
      </div>
      <button type="submit">{submitLabel}</button>
    </form>
  );
}

function LinkForm({ vms, onSubmit }: { vms: string[]; onSubmit: (a: string, b: string) => void }) {
  const [a0, setA] = useState("");
  const [b0, setB] = useState("");
  // Choices that no longer exist (the file changed) fall back to two different VMs.
  const a = vms.includes(a0) ? a0 : (vms[0] ?? "");
  const b = vms.includes(b0) && b0 !== a ? b0 : (vms.find((v) => v !== a) ?? "");
  return (
    <form
      className="card"
      aria-labelledby="addlink-h"
      onSubmit={(e) => {
        e.preventDefault();
        onSubmit(a, b);
      }}
    >
      <h3 id="addlink-h">Add a link</h3>
      <div className="row">
        <label>
          From{" "}
          <select value={a} onChange={(e) => setA(e.target.value)}>
            {vms.map((v) => (
              <option key={v}>{v}</option>
            ))}
          </select>
        </label>
        <label>
          To{" "}
          <select value={b} onChange={(e) => setB(e.target.value)}>
            {vms.map((v) => (
              <option key={v}>{v}</option>
            ))}
          </select>
        </label>
      </div>
      <button type="submit" disabled={vms.length < 2 || a === b}>
        Add link
      </button>
    </form>
  );
}


