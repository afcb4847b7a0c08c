// The lab drawn with React Flow: nodes as boxes holding their VMs, lab networks as pills,
// links as edges between VMs. VM colours follow their live state (from the event stream).
import { useEffect, useMemo, useRef, useState } from "react";
import {
  Background,
  Controls,
  Handle,
  Position,
  ReactFlow,
  useNodesState,
  type Connection,
  type Edge,
  type Node,
  type NodeChange,
  type ReactFlowInstance,
  type NodeProps,
} from "@xyflow/react";
import "@xyflow/react/dist/style.css";
import type { Topology, TopoVm } from "../labfile";
import { elkPlace } from "./elkLayout";

export interface VmLive {
  state: string;
  boot_ms: number | null;
  reason?: string | null;
  /** ts_ms of the event that set this state (for the latency measurement). */
  eventTs?: number;
}

export type Selection =
  | { kind: "vm"; id: string }
  | { kind: "link"; name: string }
  | { kind: "network"; name: string }
  | null;

const VM_W = 190;
const VM_H = 58;
const GAP = 12;
const HEAD = 30;
const GROUP_W = VM_W + 2 * GAP;
// Room between node boxes for a link's label (name and impairment).
const COL = GROUP_W + 180;

/** A network pill's size before React Flow has measured it (text at ~7.5 px a character). */
function netSize(n: Node): { width: number; height: number } {
  const d = n.data as NetData;
  const chars = d.name.length + (d.subnet ? d.subnet.length + 1 : 0);
  return { width: Math.round(54 + 7.5 * chars), height: 34 };
}

/** The size of a movable item (node box or network pill); null for VMs (inside their box). */
function boxSize(n: Node): { width: number; height: number } | null {
  if (n.type === "vm") return null;
  if (n.measured?.width && n.measured?.height) return { width: n.measured.width, height: n.measured.height };
  if (n.type === "net") return netSize(n);
  const st = n.style as { width?: number; height?: number } | undefined;
  return { width: st?.width ?? GROUP_W, height: st?.height ?? 100 };
}

/** Moves the items of `movable` down until none overlaps another box (the others stay where
 * they are): a drop or a saved place on top of a box never hides it or its links. */
function settle(nodes: Node[], movable: (id: string) => boolean): Node[] {
  const placed: { x: number; y: number; w: number; h: number }[] = [];
  const hit = (b: { x: number; y: number; w: number; h: number }) =>
    placed.filter((p) => b.x < p.x + p.w + 20 && p.x < b.x + b.w + 20 && b.y < p.y + p.h + 20 && p.y < b.y + b.h + 20);
  for (const n of nodes) {
    const sz = boxSize(n);
    if (sz && !movable(n.id)) placed.push({ ...n.position, w: sz.width, h: sz.height });
  }
  return nodes.map((n) => {
    const sz = boxSize(n);
    if (!sz || !movable(n.id)) return n;
    const b = { ...n.position, w: sz.width, h: sz.height };
    for (let i = 0; i < 200; i++) {
      const over = hit(b);
      if (!over.length) break;
      b.y = Math.max(...over.map((p) => p.y + p.h)) + 30;
    }
    placed.push(b);
    return b.x === n.position.x && b.y === n.position.y ? n : { ...n, position: { x: b.x, y: b.y } };
  });
}

type VmData = { vm: TopoVm; live?: VmLive; selected: boolean; connectable: boolean };
type NetData = { name: string; subnet?: string };
type GroupData = { name: string; template?: string; nodeNetwork?: string };

declare global {
  interface Window {
    __kobakoShown?: { vm: string; state: string; eventTs?: number; shownMs: number }[];
  }
}

/** What a VM is, for its icon: a router (FRR/router images, router-like names, or several
 * interfaces that are not all on one network), a service (web, cache, database, logger images
 * or names), else a host. */
export function vmRole(vm: TopoVm): "router" | "service" | "host" {
  const img = vm.image.toLowerCase();
  const name = vm.name.toLowerCase();
  if (/frr|router|vyos|bird/.test(img) || /^(r\d+|rtr|router|spine|leaf|core|edge|gw|fw)/.test(name)) return "router";
  if (/web|redis|nginx|db|sql|log/.test(img) || /^(api|web|cache|db|log|redis|ids|dns|srv|server)/.test(name)) return "service";
  return "host";
}

/** A small line icon for a role (routers: arrows, services: stacked disks, hosts: a screen,
 * networks: a switch). */
export function RoleIcon({ role }: { role: "router" | "service" | "host" | "switch" }) {
  const common = { width: 16, height: 16, viewBox: "0 0 16 16", fill: "none", stroke: "currentColor", strokeWidth: 1.5 };
  return (
    <svg {...common} className={`roleicon role-${role}`} role="img" aria-label={role}>
      {role === "router" ? (
        <>
          <circle cx="8" cy="8" r="6.5" />
          <path d="M4 8h8M9.5 5.5 12 8l-2.5 2.5M6.5 5.5 4 8l2.5 2.5" />
        </>
      ) : role === "service" ? (
        <>
          <ellipse cx="8" cy="4" rx="5.5" ry="2" />
          <path d="M2.5 4v8c0 1.1 2.5 2 5.5 2s5.5-.9 5.5-2V4M2.5 8c0 1.1 2.5 2 5.5 2s5.5-.9 5.5-2" />
        </>
      ) : role === "switch" ? (
        <>
          <rect x="1.5" y="4.5" width="13" height="7" rx="1.5" />
          <path d="M4 8h1M7 8h1M10 8h1" />
        </>
      ) : (
        <>
          <rect x="2" y="2.5" width="12" height="8.5" rx="1" />
          <path d="M6 14h4M8 11v3" />
        </>
      )}
    </svg>
  );
}

function VmNode({ data }: NodeProps<Node<VmData>>) {
  const id = `${data.vm.node}.${data.vm.name}`;
  const state = data.live?.state ?? "draft";
  useEffect(() => {
    // Painted: record when, for the event-to-screen measurement.
    const eventTs = data.live?.eventTs;
    requestAnimationFrame(() => {
      (window.__kobakoShown ??= []).push({ vm: id, state, eventTs, shownMs: Date.now() });
    });
  }, [id, state, data.live?.eventTs]);
  const boot = data.live?.boot_ms;
  return (
    <div
      className={`vmnode state-${state}${data.selected ? " selected" : ""}`}
      data-vm={id}
      data-state={state}
      title={data.live?.reason ?? undefined}
    >
      <Handle type="target" position={Position.Left} isConnectable={data.connectable} />
      <div className="vmname">
        <RoleIcon role={vmRole(data.vm)} /> {data.vm.name}
      </div>
      <div className="vmmeta">
        {data.vm.image} · {data.vm.vcpus} vCPU · {data.vm.memory}
      </div>
      <div className="vmstate">
        <span className="dot" aria-hidden="true" />
        {state.replace("_", " ")}
        {boot != null && state === "ready" ? <span className="boot"> · booted in {boot} ms</span> : null}
        {state === "agent_up" && data.live?.reason ? <span className="boot"> · {data.live.reason}</span> : null}
      </div>
      <Handle type="source" position={Position.Right} isConnectable={data.connectable} />
    </div>
  );
}

function NetNode({ data }: NodeProps<Node<NetData>>) {
  return (
    <div className="netnode" data-network={data.name}>
      <Handle type="target" position={Position.Bottom} isConnectable={false} />
      <RoleIcon role="switch" /> <strong>{data.name}</strong>
      {data.subnet ? <span> {data.subnet}</span> : null}
    </div>
  );
}

function GroupNode({ data }: NodeProps<Node<GroupData>>) {
  return (
    <div className="groupnode" data-node={data.name}>
      <div className="grouphead">
        <strong>{data.name}</strong>
        {data.template ? <span className="tmpl"> ({data.template})</span> : null}
      </div>
      {data.nodeNetwork ? <div className="groupnet">node network {data.nodeNetwork}</div> : null}
    </div>
  );
}

// Not "group": React Flow styles its built-in group type with a border of its own.
const nodeTypes = { vm: VmNode, net: NetNode, nodegroup: GroupNode };

export function impairText(imp: Record<string, unknown> | null | undefined): string {
  if (!imp) return "";
  const parts: string[] = [];
  for (const [k, v] of Object.entries(imp)) {
    if (v == null) continue;
    if (typeof v === "object") {
      const p = (v as Record<string, unknown>).percent;
      if (p != null) parts.push(`${k} ${String(p)}`);
    } else parts.push(`${k} ${String(v)}`);
  }
  return parts.join(", ");
}

/** Live traffic of VM interfaces (`node.vm:iface`), bytes per second from the VM's side. */
export type Rates = Map<string, { sent: number; received: number }>;

/** A rate for an edge label: `0 B/s`, `740 B/s`, `12.5 kB/s`, `3.1 MB/s`. */
export function rateText(bps: number): string {
  if (bps < 1000) return `${Math.round(bps)} B/s`;
  if (bps < 1e6) return `${(bps / 1e3).toFixed(1)} kB/s`;
  return `${(bps / 1e6).toFixed(1)} MB/s`;
}

/** The drag data type of the editor's "VM" palette item. */
export const VM_DRAG = "application/x-kobako-vm";

/** One entry of the right-click menu. */
export interface MenuItem {
  label: string;
  run: () => void;
  disabled?: boolean;
}

/** Positions of the movable items (`node:NAME`, `net:NAME`). */
export type Positions = Record<string, { x: number; y: number }>;

export function Topology({
  topo,
  live,
  linkLive,
  rates,
  selection,
  onSelect,
  onConnect,
  positions,
  onMoved,
  onDropVm,
  menu,
  onDelete,
}: {
  topo: Topology;
  live?: Map<string, VmLive>;
  linkLive?: Map<string, { up: boolean; impairment: Record<string, unknown> | null }>;
  /** Live traffic per VM interface (the lab view polls it); drawn on the edges. */
  rates?: Rates;
  selection: Selection;
  onSelect: (s: Selection) => void;
  /** Editor: called with `node.vm` of both ends when a link is drawn. */
  onConnect?: (a: string, b: string) => void;
  /** Where the items were left last time (a saved layout). */
  positions?: Positions;
  /** Called (debounced) with every movable item's position after the user moved one (by
   * dragging or with the arrow keys). */
  onMoved?: (p: Positions) => void;
  /** Editor: a VM was dropped from the palette, on a node box (its name) or outside any
   * (null: a new node), at this point of the drawing. */
  onDropVm?: (node: string | null, at: { x: number; y: number }) => void;
  /** The right-click menu of a VM, network or link (none: no menu). */
  menu?: (s: NonNullable<Selection>) => MenuItem[];
  /** Editor: VMs (`node.vm`) and links (names) deleted in the graph (Backspace/Delete); without
   * it nothing can be deleted from the drawing (it would only vanish until the next render). */
  onDelete?: (vms: string[], links: string[]) => void;
}) {
  const deleteRef = useRef(onDelete);
  deleteRef.current = onDelete;
  const [ctx, setCtx] = useState<{ x: number; y: number; title: string; items: MenuItem[] } | null>(null);
  const openMenu = (e: React.MouseEvent, s: NonNullable<Selection>, title: string) => {
    if (!menu) return;
    e.preventDefault();
    const items = menu(s);
    if (!items.length) return;
    const box = rootRef.current?.getBoundingClientRect();
    onSelect(s);
    setCtx({ x: e.clientX - (box?.left ?? 0), y: e.clientY - (box?.top ?? 0), title, items });
  };
  useEffect(() => {
    if (!ctx) return;
    const close = (e: KeyboardEvent | MouseEvent) => {
      if (e instanceof KeyboardEvent && e.key !== "Escape") return;
      if (e instanceof MouseEvent && (e.target as HTMLElement).closest?.(".ctxmenu")) return;
      setCtx(null);
    };
    window.addEventListener("keydown", close);
    window.addEventListener("mousedown", close);
    return () => {
      window.removeEventListener("keydown", close);
      window.removeEventListener("mousedown", close);
    };
  }, [ctx]);
  const connectRef = useRef(onConnect);
  connectRef.current = onConnect;
  const movedRef = useRef(onMoved);
  movedRef.current = onMoved;
  const saved = useRef(positions);
  saved.current = positions;
  const editable = !!onConnect;
  const { nodes: layout, edges } = useMemo(() => {
    const nodes: Node[] = [];
    const edges: Edge[] = [];
    const perRow = Math.max(2, Math.min(5, Math.ceil(Math.sqrt(topo.nodes.length + 1))));
    const netY = topo.networks.length ? 0 : -80;
    topo.networks.forEach((n, i) => {
      nodes.push({
        id: `net:${n.name}`,
        type: "net",
        position: { x: 40 + i * COL, y: netY },
        data: { name: n.name, subnet: n.subnet },
        selectable: true,
      });
    });
    let rowY = netY + 110;
    let rowH = 0;
    topo.nodes.forEach((n, i) => {
      if (i > 0 && i % perRow === 0) {
        rowY += rowH + 60;
        rowH = 0;
      }
      const h = HEAD + (n.nodeNetwork ? 18 : 0) + n.vms.length * (VM_H + GAP) + GAP;
      rowH = Math.max(rowH, h);
      const gid = `node:${n.name}`;
      nodes.push({
        id: gid,
        type: "nodegroup",
        position: { x: (i % perRow) * COL, y: rowY },
        style: { width: GROUP_W, height: h },
        data: { name: n.name, template: n.template, nodeNetwork: n.nodeNetwork },
        ariaLabel: `Node ${n.name} (Enter, then arrow keys: move it)`,
        selectable: true,
        draggable: true,
      });
      n.vms.forEach((v, j) => {
        const id = `${n.name}.${v.name}`;
        nodes.push({
          id,
          type: "vm",
          parentId: gid,
          extent: "parent",
          position: { x: GAP, y: HEAD + (n.nodeNetwork ? 18 : 0) + j * (VM_H + GAP) },
          data: {
            vm: v,
            live: live?.get(id),
            selected: selection?.kind === "vm" && selection.id === id,
            connectable: editable,
          },
          ariaLabel: `VM ${id}, ${live?.get(id)?.state ?? "not started"} (Enter: details)`,
          draggable: false,
        });
        for (const i of v.ifaces) {
          if (i.network) {
            const r = rates?.get(`${id}:${i.name}`);
            edges.push({
              id: `att:${id}:${i.name}`,
              source: id,
              target: `net:${i.network}`,
              className: "attach",
              focusable: false,
              label: `${i.name}${i.addresses[0] ? " " + i.addresses[0] : ""}${r ? ` · ↑${rateText(r.sent)} ↓${rateText(r.received)}` : ""}`,
              style: { stroke: "#7a8aa0" },
            });
          }
        }
      });
    });
    for (const l of topo.links) {
      const ll = linkLive?.get(l.name);
      const up = ll ? ll.up : l.up;
      const imp = impairText(ll ? ll.impairment : l.impair);
      const sel = selection?.kind === "link" && selection.name === l.name;
      // Traffic over the link: what its first end sent and received.
      const r = rates?.get(l.a);
      const traffic = r ? ` · ${rateText(r.sent + r.received)}` : "";
      edges.push({
        id: `link:${l.name}`,
        source: l.a.split(":")[0],
        target: l.b.split(":")[0],
        label: `${l.name}${up ? "" : " (cut)"}${imp ? ` · ${imp}` : ""}${traffic}`,
        className: `link ${up ? "up" : "down"}${sel ? " selected" : ""}`,
        style: {
          stroke: up ? (imp ? "#c77c00" : "#2a7de1") : "#c0392b",
          strokeWidth: sel ? 5 : 3,
          strokeDasharray: up ? undefined : "6 5",
        },
        labelStyle: { fontWeight: 600 },
        ariaLabel: `Link ${l.name} ${l.a} to ${l.b}${up ? "" : ", cut"}${imp ? `, ${imp}` : ""}${traffic ? `, ${traffic.slice(3)}` : ""} (Enter: details)`,
        data: { link: l.name },
      });
    }
    return { nodes, edges };
  }, [topo, live, linkLive, rates, selection, editable]);

  // Where items go: where the user left them (a saved layout), else where ELK puts them once
  // it has run, else the simple grid above. React Flow keeps positions in its node state: a new
  // layout keeps the measurements and the places of what was there; new items are settled so
  // that they overlap nothing.
  const [auto, setAuto] = useState<Positions | null>(null);
  const rootRef = useRef<HTMLDivElement>(null);
  const layouts = useRef(0);
  const autoRef = useRef(auto);
  autoRef.current = auto;
  const place = (n: Node): Node => {
    if (n.type === "vm") return n;
    const p = saved.current?.[n.id] ?? autoRef.current?.[n.id];
    return p ? { ...n, position: { x: p.x, y: p.y } } : n;
  };
  const [nodes, setNodes, onNodesChange] = useNodesState<Node>(settle(layout.map(place), () => true));
  useEffect(() => {
    setNodes((prev) => {
      const old = new Map(prev.map((n) => [n.id, n]));
      const next = layout.map((n) => {
        const p = old.get(n.id);
        if (!p) return place(n);
        // VMs sit where their node box puts them (a box grows with a node network line);
        // boxes and networks stay where they were moved.
        return { ...n, position: n.type === "vm" ? n.position : p.position, measured: p.measured, selected: p.selected };
      });
      return settle(next, (id) => !old.has(id));
    });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [layout, setNodes]);
  // ELK runs again when items or wires come or go (not for state colours or labels).
  const wires = useMemo(() => {
    const parent = new Map(layout.filter((n) => n.parentId).map((n) => [n.id, n.parentId as string]));
    return edges.map((e) => ({ id: e.id, source: parent.get(e.source) ?? e.source, target: parent.get(e.target) ?? e.target }));
  }, [layout, edges]);
  const structure = layout.filter((n) => n.type !== "vm").map((n) => `${n.id}:${JSON.stringify(n.style ?? {})}`).join(" ") + "|" + wires.map((w) => `${w.source}>${w.target}`).join(" ");
  useEffect(() => {
    let live = true;
    const boxes = layout.filter((n) => n.type !== "vm").map((n) => ({ id: n.id, ...(boxSize(n) as { width: number; height: number }) }));
    elkPlace(boxes, wires)
      .then((pos) => {
        if (!live) return;
        setAuto(pos);
        // Items the user has not placed move to ELK's places; nothing may overlap after.
        setNodes((prev) =>
          settle(
            prev.map((n) => (n.type !== "vm" && !saved.current?.[n.id] && pos[n.id] ? { ...n, position: pos[n.id] } : n)),
            (id) => !saved.current?.[id],
          ),
        );
        window.setTimeout(() => void flow.current?.fitView({ padding: 0.15, maxZoom: 1.1 }), 30);
        // How many ELK layouts were applied (tests wait for the next one).
        rootRef.current?.setAttribute("data-layouts", String(++layouts.current));
      })
      .catch((e) => console.warn("ELK layout failed; keeping the grid", e));
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [structure]);
  const nodesRef = useRef(nodes);
  nodesRef.current = nodes;
  // A VM, node or network added or removed (the editor): show the whole drawing again.
  const flow = useRef<ReactFlowInstance<Node, Edge> | null>(null);
  const shape = layout.map((n) => n.id).join(" ");
  const firstShape = useRef(shape);
  useEffect(() => {
    if (shape === firstShape.current) return;
    firstShape.current = shape;
    const t = window.setTimeout(() => void flow.current?.fitView({ padding: 0.15, maxZoom: 1.1, duration: 200 }), 50);
    return () => window.clearTimeout(t);
  }, [shape]);
  const saveTimer = useRef<number>();
  const changed = (changes: NodeChange<Node>[]) => {
    onNodesChange(changes);
    // A drag ends with `dragging: false`; an arrow key moves without `dragging`.
    if (!changes.some((c) => c.type === "position" && c.position && !c.dragging)) return;
    window.clearTimeout(saveTimer.current);
    saveTimer.current = window.setTimeout(() => {
      const out: Positions = {};
      for (const n of nodesRef.current) {
        if (n.type !== "vm") out[n.id] = { x: Math.round(n.position.x), y: Math.round(n.position.y) };
      }
      movedRef.current?.(out);
    }, 400);
  };
  useEffect(() => () => window.clearTimeout(saveTimer.current), []);

  return (
    <div
      ref={rootRef}
      className="topology"
      aria-label={`Topology of ${topo.name}`}
      onDragOver={(e) => {
        if (onDropVm && e.dataTransfer.types.includes(VM_DRAG)) {
          e.preventDefault();
          e.dataTransfer.dropEffect = "copy";
        }
      }}
      onDrop={(e) => {
        if (!onDropVm || !e.dataTransfer.types.includes(VM_DRAG)) return;
        e.preventDefault();
        const box = document
          .elementsFromPoint(e.clientX, e.clientY)
          .map((el) => el.closest("[data-node]"))
          .find((el) => el);
        const at = flow.current?.screenToFlowPosition({ x: e.clientX, y: e.clientY }) ?? { x: 0, y: 0 };
        onDropVm(box?.getAttribute("data-node") ?? null, at);
      }}
      onKeyDown={(e) => {
        // Keyboard: Tab reaches every VM and link of the graph; Enter opens it in the panel.
        if (e.key !== "Enter") return;
        const id = (e.target as HTMLElement).closest("[data-id]")?.getAttribute("data-id");
        if (!id) return;
        if (id.startsWith("link:")) onSelect({ kind: "link", name: id.slice(5) });
        else if (id.startsWith("net:")) onSelect({ kind: "network", name: id.slice(4) });
        else if (!id.startsWith("node:") && !id.startsWith("att:")) onSelect({ kind: "vm", id });
      }}
    >
      <ReactFlow
        nodes={nodes}
        edges={edges}
        nodeTypes={nodeTypes}
        fitView
        fitViewOptions={{ padding: 0.15, maxZoom: 1.1 }}
        minZoom={0.2}
        proOptions={{ hideAttribution: true }}
        onNodesChange={changed}
        onInit={(f) => {
          flow.current = f;
        }}
        nodesConnectable={editable}
        onConnect={(c: Connection) => connectRef.current?.(c.source, c.target)}
        onNodeClick={(_, n) => {
          if (n.type === "vm") onSelect({ kind: "vm", id: n.id });
          else if (n.type === "net") onSelect({ kind: "network", name: (n.data as NetData).name });
        }}
        onEdgeClick={(_, e) => {
          if (e.id.startsWith("link:")) onSelect({ kind: "link", name: e.id.slice(5) });
        }}
        onPaneClick={() => onSelect(null)}
        deleteKeyCode={onDelete ? ["Backspace", "Delete"] : null}
        onBeforeDelete={async ({ nodes: ns, edges: es }) => {
          // Only VMs and links are deleted, and only through the lab file: the drawing follows.
          const vms = ns.filter((n) => n.type === "vm").map((n) => n.id);
          const links = es.filter((e) => e.id.startsWith("link:")).map((e) => e.id.slice(5));
          if (vms.length || links.length) deleteRef.current?.(vms, links);
          return false;
        }}
        onNodeContextMenu={(e, n) => {
          if (n.type === "vm") openMenu(e, { kind: "vm", id: n.id }, `VM ${n.id}`);
          else if (n.type === "net") openMenu(e, { kind: "network", name: (n.data as NetData).name }, `Network ${(n.data as NetData).name}`);
        }}
        onEdgeContextMenu={(e, ed) => {
          if (ed.id.startsWith("link:")) openMenu(e, { kind: "link", name: ed.id.slice(5) }, `Link ${ed.id.slice(5)}`);
        }}
      >
        <Background gap={20} size={1} />
        <Controls showInteractive={false} />
      </ReactFlow>
      {ctx ? (
        <div className="ctxmenu" role="menu" aria-label={ctx.title} style={{ left: ctx.x, top: ctx.y }}>
          <div className="ctxtitle">{ctx.title}</div>
          {ctx.items.map((it) => (
            <button
              key={it.label}
              type="button"
              role="menuitem"
              disabled={it.disabled}
              onClick={() => {
                setCtx(null);
                it.run();
              }}
            >
              {it.label}
            </button>
          ))}
        </div>
      ) : null}
    </div>
  );
}
