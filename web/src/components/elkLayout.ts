// Automatic placement of a lab drawing with ELK's layered algorithm (elkjs, loaded on first
// use so the first page does not pay for it): node boxes and network pills become ELK nodes,
// links and network attachments its edges, so connected items sit in neighbouring layers with
// room for link labels between them, and nothing overlaps. React Flow still draws the edges;
// ELK only decides where the boxes go.
import type { ElkNode } from "elkjs/lib/elk-api";

export interface Box {
  id: string;
  width: number;
  height: number;
}

export interface Wire {
  id: string;
  source: string;
  target: string;
}

type Elk = { layout: (g: ElkNode) => Promise<ElkNode> };
let elk: Promise<Elk> | null = null;

function load(): Promise<Elk> {
  elk ??= import("elkjs/lib/elk.bundled.js").then((m) => new m.default() as unknown as Elk);
  return elk;
}

/** Top-left positions of `boxes`, laid out left to right along `wires` (between boxes). */
export async function elkPlace(boxes: Box[], wires: Wire[]): Promise<Record<string, { x: number; y: number }>> {
  const ids = new Set(boxes.map((b) => b.id));
  const graph: ElkNode = {
    id: "lab",
    layoutOptions: {
      "elk.algorithm": "layered",
      "elk.direction": "RIGHT",
      // Room for a link's label (name, impairment) between layers; boxes well apart.
      "elk.layered.spacing.nodeNodeBetweenLayers": "170",
      "elk.spacing.nodeNode": "50",
      "elk.spacing.componentComponent": "70",
      "elk.layered.nodePlacement.strategy": "BRANDES_KOEPF",
      "elk.layered.crossingMinimization.strategy": "LAYER_SWEEP",
      "elk.separateConnectedComponents": "true",
    },
    children: boxes.map((b) => ({ id: b.id, width: b.width, height: b.height })),
    // Parallel links between two boxes are one constraint for ELK.
    edges: [...new Map(wires.filter((w) => ids.has(w.source) && ids.has(w.target) && w.source !== w.target)
      .map((w) => [`${w.source}>${w.target}`, w])).values()]
      .map((w) => ({ id: w.id, sources: [w.source], targets: [w.target] })),
  };
  const out = await (await load()).layout(graph);
  const pos: Record<string, { x: number; y: number }> = {};
  for (const c of out.children ?? []) pos[c.id] = { x: Math.round(c.x ?? 0), y: Math.round(c.y ?? 0) };
  return pos;
}
