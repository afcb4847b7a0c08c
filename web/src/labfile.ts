// The lab file is the model the editor works on: a YAML document (comments kept) that the
// topology is drawn from and that edits (add a VM, add a link, change a VM) are written into.
// The server resolves and validates it (POST /labs); here we only read enough to draw it.
import { Document, isMap, parseDocument, stringify, YAMLMap } from "yaml";
import type { SpecLab, TemplateInfo } from "./api";

export interface TopoIface {
  name: string;
  network?: string;
  link?: string;
  nodeNetwork?: boolean;
  addresses: string[];
}
export interface TopoVm {
  node: string;
  name: string;
  image: string;
  vcpus: number;
  memory: string;
  ifaces: TopoIface[];
}
export interface TopoNode {
  name: string;
  template?: string;
  vms: TopoVm[];
  nodeNetwork?: string;
}
export interface TopoLink {
  name: string;
  /** `node.vm:iface` */
  a: string;
  b: string;
  up: boolean;
  impair?: Record<string, unknown> | null;
}
export interface Topology {
  name: string;
  nodes: TopoNode[];
  networks: { name: string; subnet?: string }[];
  links: TopoLink[];
}

type Obj = Record<string, unknown>;

function obj(v: unknown): Obj {
  return v && typeof v === "object" && !Array.isArray(v) ? (v as Obj) : {};
}

function str(v: unknown, d: string): string {
  return typeof v === "string" || typeof v === "number" ? String(v) : d;
}

/** Memory as a lab file writes it (the resolved spec has "96M" already, or MiB). */
export function mib(m: number | string): string {
  if (typeof m === "string") return m;
  return m % 1024 === 0 ? `${m / 1024}G` : `${m}M`;
}

/** VMs a node template defines (name → fields), from the template's YAML text. */
function templateVms(templates: TemplateInfo[], name: string, depth = 0): Record<string, Obj> {
  const t = templates.find((x) => x.name === name);
  if (!t || depth > 4) return {};
  let doc: Obj;
  try {
    doc = obj(parseDocument(t.text).toJS());
  } catch {
    return {};
  }
  const base = typeof doc.template === "string" ? templateVms(templates, doc.template, depth + 1) : {};
  const own = obj(doc.vms);
  const out: Record<string, Obj> = { ...base };
  for (const [k, v] of Object.entries(own)) out[k] = { ...obj(base[k]), ...obj(v) };
  return out;
}

/** The links inside a node that template `name` (and the templates it starts from) declare:
 * a node has its template chain's links and its own. */
function templateLinks(templates: TemplateInfo[], name: string, depth = 0): unknown[] {
  const t = templates.find((x) => x.name === name);
  if (!t || depth > 4) return [];
  let doc: Obj;
  try {
    doc = obj(parseDocument(t.text).toJS());
  } catch {
    return [];
  }
  const base = typeof doc.template === "string" ? templateLinks(templates, doc.template, depth + 1) : [];
  return [...base, ...(Array.isArray(doc.links) ? doc.links : [])];
}

/** Draws a lab file draft; throws on YAML syntax errors (with line numbers in the message). */
export function draftTopology(doc: Document, templates: TemplateInfo[]): Topology {
  if (doc.errors.length) throw doc.errors[0];
  const js = obj(doc.toJS());
  const defaults = obj(js.defaults);
  const nodes: TopoNode[] = [];
  const links: TopoLink[] = [];
  for (const [nname, nraw] of Object.entries(obj(js.nodes))) {
    const n = obj(nraw);
    const tvms = typeof n.template === "string" ? templateVms(templates, n.template) : {};
    const own = obj(n.vms);
    const names = [...new Set([...Object.keys(tvms), ...Object.keys(own)])];
    const vms: TopoVm[] = names.map((vname) => {
      const v = { ...obj(tvms[vname]), ...obj(own[vname]) };
      const ifs = { ...obj(obj(tvms[vname]).interfaces), ...obj(obj(own[vname]).interfaces) };
      return {
        node: nname,
        name: vname,
        image: str(v.image, str(defaults.image, "tiny")),
        vcpus: Number(str(v.vcpus, str(defaults.vcpus, "1"))),
        memory: str(v.memory, str(defaults.memory, "128M")),
        ifaces: Object.entries(ifs).map(([iname, iraw]) => {
          const i = obj(iraw);
          const addrs = Array.isArray(i.addresses) ? i.addresses.map(String) : [];
          return { name: iname, network: typeof i.network === "string" ? i.network : undefined, addresses: addrs };
        }),
      };
    });
    const nn = obj(n.node_network);
    nodes.push({
      name: nname,
      template: typeof n.template === "string" ? n.template : undefined,
      vms,
      nodeNetwork: vms.length > 1 ? str(nn.subnet, "172.31.0.0/24") : undefined,
    });
    const nodeLinks = [
      ...(typeof n.template === "string" ? templateLinks(templates, n.template) : []),
      ...(Array.isArray(n.links) ? n.links : []),
    ];
    {
      for (const l of nodeLinks) {
        const e = obj(l).endpoints;
        if (Array.isArray(e) && e.length === 2) {
          const [a, b] = e.map((x) => `${nname}.${String(x)}`);
          links.push({ name: str(obj(l).name, `${a}-${b}`), a, b, up: obj(l).state !== "down" });
        }
      }
    }
  }
  const linksRaw = Array.isArray(js.links) ? js.links : [];
  for (const l of linksRaw) {
    const e = obj(l).endpoints;
    if (!Array.isArray(e) || e.length !== 2) continue;
    const [a, b] = e.map(String);
    const name = str(obj(l).name, `${a.split(":")[0]}-${b.split(":")[0]}`);
    links.push({ name, a, b, up: obj(l).state !== "down", impair: obj(l).impair as Obj | undefined });
  }
  const networks = Object.entries(obj(js.networks)).map(([name, v]) => ({
    name,
    subnet: typeof obj(v).subnet === "string" ? (obj(v).subnet as string) : undefined,
  }));
  // Interfaces named by links are attached to them.
  for (const l of links) {
    for (const [end, other] of [
      [l.a, l.b],
      [l.b, l.a],
    ]) {
      void other;
      const [vmRef, iface] = end.split(":");
      const [node, vm] = vmRef.split(".");
      const v = nodes.find((n) => n.name === node)?.vms.find((x) => x.name === vm);
      if (!v) continue;
      const i = v.ifaces.find((x) => x.name === iface);
      if (i) i.link = l.name;
      else v.ifaces.push({ name: iface, link: l.name, addresses: [] });
    }
  }
  return { name: str(js.name, "(unnamed)"), nodes, networks, links };
}

/** The topology of a resolved lab (GET /labs/{name} `spec`). */
export function specTopology(spec: SpecLab): Topology {
  return {
    name: spec.name,
    nodes: spec.nodes.map((n) => ({
      name: n.name,
      template: n.template ?? undefined,
      nodeNetwork: n.network?.subnet,
      vms: n.vms.map((v) => ({
        node: n.name,
        name: v.id.vm,
        image: v.image,
        vcpus: v.vcpus,
        memory: mib(v.memory),
        ifaces: v.interfaces.map((i) => ({
          name: i.name,
          addresses: i.addresses,
          nodeNetwork: i.attach === "node_network",
          network: typeof i.attach === "object" && "network" in i.attach ? i.attach.network : undefined,
          link: typeof i.attach === "object" && "link" in i.attach ? i.attach.link : undefined,
        })),
      })),
    })),
    networks: spec.networks.map((n) => ({ name: n.name, subnet: n.subnet ?? undefined })),
    links: spec.links.map((l) => ({
      name: l.name,
      a: `${l.endpoints[0].vm.node}.${l.endpoints[0].vm.vm}:${l.endpoints[0].iface}`,
      b: `${l.endpoints[1].vm.node}.${l.endpoints[1].vm.vm}:${l.endpoints[1].iface}`,
      up: l.state !== "down",
      impair: l.impair,
    })),
  };
}

/** A lab file for a resolved lab (to edit it and save it again): the VMs with their image,
 * size and interfaces, networks and links. Services, files and routes the UI does not edit are
 * kept from the spec where they are plain. */
export function specToYaml(spec: SpecLab): string {
  const nodes: Obj = {};
  for (const n of spec.nodes) {
    const vms: Obj = {};
    for (const v of n.vms) {
      const ifaces: Obj = {};
      for (const i of v.interfaces) {
        if (i.attach === "node_network") continue;
        const e: Obj = {};
        if (typeof i.attach === "object" && "network" in i.attach) e.network = i.attach.network;
        if (i.addresses.length) e.addresses = i.addresses;
        ifaces[i.name] = e;
      }
      const vm: Obj = { image: v.image, vcpus: v.vcpus, memory: mib(v.memory) };
      if (Object.keys(ifaces).length) vm.interfaces = ifaces;
      vms[v.id.vm] = vm;
    }
    nodes[n.name] = { vms };
  }
  const networks: Obj = {};
  for (const n of spec.networks) {
    const e: Obj = {};
    if (n.subnet) e.subnet = n.subnet;
    if (n.vlan) e.vlan = n.vlan;
    networks[n.name] = e;
  }
  const out: Obj = { name: spec.name };
  if (spec.description) out.description = spec.description;
  out.nodes = nodes;
  if (Object.keys(networks).length) out.networks = networks;
  if (spec.links.length) {
    out.links = spec.links.map((l) => {
      const e: Obj = {
        name: l.name,
        endpoints: l.endpoints.map((x) => `${x.vm.node}.${x.vm.vm}:${x.iface}`),
      };
      const imp = Object.fromEntries(Object.entries(l.impair ?? {}).filter(([, v]) => v != null));
      if (Object.keys(imp).length) e.impair = imp;
      if (l.state === "down") e.state = "down";
      return e;
    });
  }
  if (spec.uplink?.length) out.uplink = { networks: spec.uplink };
  return stringify(out, { lineWidth: 0 });
}

// ---- edits ---------------------------------------------------------------------------------

function ensureMap(doc: Document, path: string[]): YAMLMap {
  let cur = doc.getIn(path, true);
  if (!isMap(cur)) {
    doc.setIn(path, doc.createNode({}));
    cur = doc.getIn(path, true);
  }
  return cur as YAMLMap;
}

export interface VmFields {
  image: string;
  vcpus: number;
  memory: string;
}

/** Sets a VM's image, vCPUs and memory (creating the node and VM entries if needed). */
export function setVm(doc: Document, node: string, vm: string, f: VmFields) {
  ensureMap(doc, ["nodes", node, "vms", vm]);
  doc.setIn(["nodes", node, "vms", vm, "image"], f.image);
  doc.setIn(["nodes", node, "vms", vm, "vcpus"], f.vcpus);
  doc.setIn(["nodes", node, "vms", vm, "memory"], f.memory);
}

/** Adds a VM to a node (a new node if `node` is new). */
export function addVm(doc: Document, node: string, vm: string, f: VmFields) {
  if (doc.hasIn(["nodes", node, "vms", vm])) throw new Error(`node ${node} already has a VM ${vm}`);
  setVm(doc, node, vm, f);
}

function freeIface(t: Topology, node: string, vm: string): string {
  const v = t.nodes.find((n) => n.name === node)?.vms.find((x) => x.name === vm);
  const used = new Set(v?.ifaces.map((i) => i.name) ?? []);
  for (let i = 1; ; i++) if (!used.has(`eth${i}`)) return `eth${i}`;
}

/** Connects two VMs (`node.vm`) with a new point-to-point link on a fresh interface each, with
 * a /30 of 10.99.0.0/16 so they can reach each other at once. Returns the link's name. */
export function addLink(doc: Document, t: Topology, a: string, b: string): string {
  if (a === b) throw new Error("a link needs two different VMs");
  const [an, av] = a.split(".");
  const [bn, bv] = b.split(".");
  const ai = freeIface(t, an, av);
  const bi = freeIface(t, bn, bv);
  const taken = new Set(t.links.map((l) => l.name));
  let name = `${an}-${bn}`.replace(/[^a-z0-9-]/g, "-").slice(0, 30);
  for (let k = 2; taken.has(name); k++) name = `${an}-${bn}-${k}`.slice(0, 30);
  const k = t.links.length + 1;
  ensureMap(doc, ["nodes", an, "vms", av]);
  ensureMap(doc, ["nodes", bn, "vms", bv]);
  doc.setIn(["nodes", an, "vms", av, "interfaces", ai], doc.createNode({ addresses: [`10.99.${k}.1/30`] }));
  doc.setIn(["nodes", bn, "vms", bv, "interfaces", bi], doc.createNode({ addresses: [`10.99.${k}.2/30`] }));
  const links = doc.getIn(["links"], true);
  const entry = doc.createNode({ name, endpoints: [`${a}:${ai}`, `${b}:${bi}`] });
  if (links && typeof links === "object" && "items" in links) (links as { items: unknown[] }).items.push(entry);
  else doc.setIn(["links"], doc.createNode([{ name, endpoints: [`${a}:${ai}`, `${b}:${bi}`] }]));
  return name;
}

/** Removes VMs (`node.vm`) and links (by name) from the lab file: a VM's links go with it, a
 * node left without VMs (and without a template) goes too. What the drawing deletes, the file
 * loses (Backspace/Delete in the editor's graph). */
export function removeItems(doc: Document, t: Topology, vms: string[], links: string[]) {
  const gone = new Set(vms);
  const linkNames = new Set(links);
  for (const l of t.links) {
    if (gone.has(l.a.split(":")[0]) || gone.has(l.b.split(":")[0])) linkNames.add(l.name);
  }
  // Top-level links: by their name (written or derived as the drawing derives it).
  const top = doc.getIn(["links"], true) as { items?: unknown[] } | undefined;
  if (top && Array.isArray(top.items)) {
    const js = (doc.getIn(["links"]) as { toJSON?: () => unknown[] })?.toJSON?.() ?? [];
    for (let i = js.length - 1; i >= 0; i--) {
      const l = obj(js[i]);
      const e = Array.isArray(l.endpoints) ? l.endpoints.map(String) : [];
      const name = str(l.name, e.length === 2 ? `${e[0].split(":")[0]}-${e[1].split(":")[0]}` : "");
      if (linkNames.has(name)) top.items.splice(i, 1);
    }
    if (!top.items.length) doc.deleteIn(["links"]);
  }
  for (const ref of gone) {
    const [node, vm] = ref.split(".");
    doc.deleteIn(["nodes", node, "vms", vm]);
    const n = obj(obj(obj(doc.toJS()).nodes)[node]);
    if (!Object.keys(obj(n.vms)).length && typeof n.template !== "string") doc.deleteIn(["nodes", node]);
  }
}

/** A new lab file: one node from a template, or a small two-VM lab with a link. */
export function starter(name: string, template?: string): string {
  if (template) {
    return `name: ${name}\nnodes:\n  ${template.replace(/[^a-z0-9-]/g, "-")}:\n    template: ${template}\n`;
  }
  return `name: ${name}
defaults: { image: tiny, memory: 96M }
nodes:
  a:
    vms:
      h: { interfaces: { eth1: { addresses: [10.99.1.1/30] } } }
  b:
    vms:
      h: { interfaces: { eth1: { addresses: [10.99.1.2/30] } } }
links:
  - { name: ab, endpoints: ["a.h:eth1", "b.h:eth1"] }
`;
}

export { parseDocument };
