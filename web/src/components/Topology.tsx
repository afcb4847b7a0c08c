// The lab drawn with React Flow: nodes as boxes holding their VMs, lab networks as pills,
// links as edges between VMs. VM colours follow their live state (from the event stream).
import { useEffect, useMemo, useRef } from "react";
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

type VmData = { vm: TopoVm; live?: VmLive; selected: boolean; connectable: boolean };
type NetData = { name: string; subnet?: string };
type GroupData = { name: string; template?: string; nodeNetwork?: string };

declare global {
  interface Window {
    __kobakoShown?: { vm: string; state: string; eventTs?: number; shownMs: number }[];
  }
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
      <div className="vmname">{data.vm.name}</div>
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
      <strong>{data.name}</strong>
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

/** The drag data type of the editor's "VM" palette item. */
export const VM_DRAG = "application/x-kobako-vm";

/** Positions of the movable items (`node:NAME`, `net:NAME`). */
export type Positions = Record<string, { x: number; y: number }>;

export function Topology({
  topo,
  live,
  linkLive,
  selection,
  onSelect,
  onConnect,
  positions,
  onMoved,
  onDropVm,
}: {
  topo: Topology;
  live?: Map<string, VmLive>;
  linkLive?: Map<string, { up: boolean; impairment: Record<string, unknown> | null }>;
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
}) {
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
            edges.push({
              id: `att:${id}:${i.name}`,
              source: id,
              target: `net:${i.network}`,
              className: "attach",
              focusable: false,
              label: `${i.name}${i.addresses[0] ? " " + i.addresses[0] : ""}`,
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
      edges.push({
        id: `link:${l.name}`,
        source: l.a.split(":")[0],
        target: l.b.split(":")[0],
        label: `${l.name}${up ? "" : " (cut)"}${imp ? ` · ${imp}` : ""}`,
        className: `link ${up ? "up" : "down"}${sel ? " selected" : ""}`,
        style: {
          stroke: up ? (imp ? "#c77c00" : "#2a7de1") : "#c0392b",
          strokeWidth: sel ? 5 : 3,
          strokeDasharray: up ? undefined : "6 5",
        },
        labelStyle: { fontWeight: 600 },
        ariaLabel: `Link ${l.name} ${l.a} to ${l.b}${up ? "" : ", cut"}${imp ? `, ${imp}` : ""} (Enter: details)`,
        data: { link: l.name },
      });
    }
    return { nodes, edges };
  }, [topo, live, linkLive, selection, editable]);

  // React Flow measures nodes and keeps positions in its node state: new layouts keep the
  // measurements and where the user dragged a node to.
  // A saved layout places the items it knows; new items get the computed place.
  const place = (n: Node): Node => {
    const p = n.type !== "vm" ? saved.current?.[n.id] : undefined;
    return p ? { ...n, position: { x: p.x, y: p.y } } : n;
  };
  const [nodes, setNodes, onNodesChange] = useNodesState<Node>(layout.map(place));
  useEffect(() => {
    setNodes((prev) => {
      const old = new Map(prev.map((n) => [n.id, n]));
      return layout.map((n) => {
        const p = old.get(n.id);
        if (!p) return place(n);
        // VMs sit where their node box puts them (a box grows with a node network line);
        // boxes and networks stay where they were moved.
        return { ...n, position: n.type === "vm" ? n.position : p.position, measured: p.measured, selected: p.selected };
      });
    });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [layout, setNodes]);
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
      >
        <Background gap={20} size={1} />
        <Controls showInteractive={false} />
      </ReactFlow>
    </div>
  );
}
