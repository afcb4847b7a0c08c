// The kobako REST API (/api/v1): types of what the UI uses, a fetch wrapper that sends the
// access token, refreshes it before it expires (and once more on a 401), and turns error
// bodies ({"error":{"code","message","details"}}) into ApiError.

export type Role = "admin" | "member" | "viewer";

export interface User {
  name: string;
  role: Role;
  max_vms: number | null;
  max_memory_mib: number | null;
  created_ms: number;
}

export interface TokenPair {
  access_token: string;
  token_type: string;
  expires_in: number;
  refresh_token: string;
  user: User;
}

export interface LabSummary {
  name: string;
  owner: string | null;
  state: string;
  reason: string | null;
  file: string | null;
  vm_count: number;
  vms_ready: number;
  created_ms: number;
  updated_ms: number;
}

export interface VmInfo {
  name: string;
  lab: string;
  node: string;
  vm: string;
  state: string;
  reason: string | null;
  boot_ms: number | null;
  pid: number | null;
  image: string | null;
  vcpus: number | null;
  memory_mib: number | null;
  addresses: string[];
  updated_ms: number;
}

export interface LinkInfo {
  name: string;
  endpoints: string[];
  up: boolean;
  impairment: Record<string, unknown> | null;
}

/** Traffic counters of one VM interface (its host port), from the VM's side. */
export interface IfaceCounters {
  vm: string;
  iface: string;
  attach: string;
  sent_bytes: number;
  sent_packets: number;
  received_bytes: number;
  received_packets: number;
  dropped: number;
}

export interface LabDetail extends LabSummary {
  vms: VmInfo[];
  links: LinkInfo[];
  spec: SpecLab;
}

// The resolved lab (kobako_lab::spec::Lab as JSON), the parts the UI reads.
export interface SpecLab {
  name: string;
  description?: string | null;
  nodes: SpecNode[];
  networks: SpecNetwork[];
  links: SpecLink[];
  uplink?: string[];
}
export interface SpecNode {
  name: string;
  template?: string | null;
  network?: { subnet: string; interface: string; mtu: number } | null;
  vms: SpecVm[];
}
export interface SpecVm {
  id: { node: string; vm: string };
  image: string;
  vcpus: number;
  memory: number | string;
  interfaces: SpecIface[];
}
export type Attachment = "node_network" | { network: string } | { link: string };
export interface SpecIface {
  name: string;
  attach: Attachment;
  addresses: string[];
}
export interface SpecNetwork {
  name: string;
  subnet?: string | null;
  vlan?: number | null;
}
export interface SpecLink {
  name: string;
  endpoints: { vm: { node: string; vm: string }; iface: string }[];
  impair: Record<string, unknown>;
  state: string;
}

export interface Operation {
  id: string;
  kind: string;
  lab: string | null;
  user: string;
  state: string;
  progress: { ts_ms: number; message: string }[];
  result: unknown;
  error: string | null;
  created_ms: number;
  updated_ms: number;
}

/** A deployed function (GET /functions). */
export interface FunctionInfo {
  name: string;
  owner: string | null;
  image: string;
  memory_mib: number;
  run: string;
  timeout_secs: number;
  concurrency: number;
  deployed_ms: number;
  boot_ms: number;
  snapshot_bytes: number;
}

/** What one invocation returned (POST /functions/{name}/invoke). */
export interface InvocationResult {
  function: string;
  clone: string;
  stdout: string;
  stderr: string;
  exit: number;
  timed_out: boolean;
  timings: Record<string, number>;
}

/** A lab checkpoint (GET /labs/{lab}/checkpoints). */
export interface CheckpointInfo {
  lab: string;
  name: string;
  created_ms: number;
  vms: number;
  bytes: number;
  paused_ms: number;
}

/** A packet capture of a link (POST /labs/{lab}/links/{link}/captures). */
export interface CaptureInfo {
  id: string;
  lab: string;
  link: string;
  at: string;
  user: string;
  operation: string;
  state: "running" | "done" | "failed" | "interrupted";
  packets: number;
  bytes: number;
  duration_s: number;
  max_packets: number;
  ended_by: string | null;
  error: string | null;
  started_ms: number;
  ended_ms: number | null;
  download: string;
}

/** Where the UI draws a lab's boxes (GET/PUT /labs/{lab}/layout). */
export interface Layout {
  positions: Record<string, { x: number; y: number }>;
  user?: string | null;
  updated_ms?: number;
}

export type MemberOp = "start" | "stop" | "restart";

export interface ApiToken {
  id: string;
  user: string;
  name: string;
  created_ms: number;
  expires_ms: number | null;
  last_used_ms: number | null;
  revoked: boolean;
}

export interface TemplateInfo {
  name: string;
  description: string | null;
  text: string;
}

export interface ImageInfo {
  name: string;
  kind: string;
  format: string;
  size: number;
}

export interface ExecResult {
  exit_code: number;
  signal: number | null;
  timed_out: boolean;
  stdout: string;
  stderr: string;
}

export interface AuditEntry {
  id: number;
  ts_ms: number;
  user: string;
  method: string;
  path: string;
  status: number;
}

/** One problem in a lab file (error.details of a 422 invalid_lab). */
export interface SpecError {
  file: string;
  pos: { line: number; col: number };
  path: string;
  message: string;
  fix: string | null;
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public details?: unknown,
  ) {
    super(message);
  }
}

// ---- session -------------------------------------------------------------------------------

const KEY = "kobako.session";

interface Session {
  access: string;
  refresh: string;
  /** ms since epoch when the access token expires. */
  expires: number;
  user: User;
}

let session: Session | null = load();
let refreshTimer: number | undefined;
let refreshing: Promise<boolean> | null = null;
const listeners = new Set<() => void>();

function load(): Session | null {
  try {
    const s = localStorage.getItem(KEY);
    return s ? (JSON.parse(s) as Session) : null;
  } catch {
    return null;
  }
}

function store(s: Session | null) {
  session = s;
  if (s) localStorage.setItem(KEY, JSON.stringify(s));
  else localStorage.removeItem(KEY);
  schedule();
  listeners.forEach((l) => l());
}

/** Refresh a minute before the access token expires (half its life if it is short). */
function schedule() {
  window.clearTimeout(refreshTimer);
  if (!session) return;
  const life = session.expires - Date.now();
  const lead = Math.min(60_000, life / 2);
  refreshTimer = window.setTimeout(() => void refresh(), Math.max(0, life - lead));
}

export function currentUser(): User | null {
  return session?.user ?? null;
}

export function accessToken(): string | null {
  return session?.access ?? null;
}

export function onSession(l: () => void): () => void {
  listeners.add(l);
  return () => listeners.delete(l);
}

function fromPair(p: TokenPair): Session {
  return {
    access: p.access_token,
    refresh: p.refresh_token,
    expires: Date.now() + p.expires_in * 1000,
    user: p.user,
  };
}

export async function login(username: string, password: string): Promise<User> {
  const p = await request<TokenPair>("POST", "/auth/login", { username, password }, false);
  store(fromPair(p));
  return p.user;
}

/** Exchanges the refresh token; false (and logged out) when it no longer works. */
export function refresh(): Promise<boolean> {
  if (!session) return Promise.resolve(false);
  if (refreshing) return refreshing;
  const token = session.refresh;
  refreshing = request<TokenPair>("POST", "/auth/refresh", { refresh_token: token }, false)
    .then((p) => {
      store(fromPair(p));
      return true;
    })
    .catch((e) => {
      // Another tab may have rotated it already: take what it stored.
      const other = load();
      if (other && other.refresh !== token) {
        store(other);
        return true;
      }
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) store(null);
      return false;
    })
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

export async function logout(): Promise<void> {
  const s = session;
  store(null);
  if (s) {
    await request("POST", "/auth/logout", { refresh_token: s.refresh }, false).catch(() => {});
  }
}

if (session) {
  if (session.expires < Date.now() + 5_000) void refresh();
  else schedule();
}

// ---- requests ------------------------------------------------------------------------------

export async function request<T>(
  method: string,
  path: string,
  body?: unknown,
  auth = true,
  contentType?: string,
): Promise<T> {
  const send = async () => {
    const headers: Record<string, string> = {};
    let data: BodyInit | undefined;
    if (body !== undefined) {
      if (typeof body === "string") {
        data = body;
        headers["Content-Type"] = contentType ?? "text/plain";
      } else {
        data = JSON.stringify(body);
        headers["Content-Type"] = "application/json";
      }
    }
    if (auth && session) headers.Authorization = `Bearer ${session.access}`;
    try {
      return await fetch(`/api/v1${path}`, { method, headers, body: data });
    } catch (e) {
      throw new ApiError(0, "network", `cannot reach the server (${errorText(e)}): try again`);
    }
  };
  let r = await send();
  if (r.status === 401 && auth && session) {
    if (await refresh()) r = await send();
  }
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  let json: unknown = undefined;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON
  }
  if (!r.ok) {
    const e = (json as { error?: { code?: string; message?: string; details?: unknown } })?.error;
    if (r.status === 401 && auth) store(null);
    throw new ApiError(
      r.status,
      e?.code ?? `http_${r.status}`,
      e?.message ?? `${method} ${path}: HTTP ${r.status} ${text.slice(0, 200)}`,
      e?.details,
    );
  }
  return json as T;
}

export const api = {
  me: () => request<User>("GET", "/auth/me"),
  labs: () => request<LabSummary[]>("GET", "/labs"),
  lab: (n: string) => request<LabDetail>("GET", `/labs/${enc(n)}`),
  createLab: (text: string, file = "lab.yaml") =>
    request<LabSummary[]>("POST", `/labs?file=${enc(file)}`, text, true, "application/yaml"),
  /** Replace the file of a lab that is not running (keeps its checkpoints, layout, events). */
  replaceLab: (n: string, text: string, file = "lab.yaml") =>
    request<LabSummary>("PUT", `/labs/${enc(n)}?file=${enc(file)}`, text, true, "application/yaml"),
  deleteLab: (n: string) => request<void>("DELETE", `/labs/${enc(n)}`),
  labOp: (n: string, op: "up" | "down" | "restart") =>
    request<Operation>("POST", `/labs/${enc(n)}/${op}`),
  /** Start/stop/restart a node (`web`) or one VM (`web.api`) of a lab that is up. */
  memberOp: (lab: string, target: string, op: MemberOp) =>
    request<Operation>("POST", `/labs/${enc(lab)}/nodes/${enc(target)}/${op}`),
  /** Counters of every VM interface of a lab that is up (`[]` otherwise). */
  counters: (lab: string) => request<IfaceCounters[]>("GET", `/labs/${enc(lab)}/counters`),
  captures: (lab: string) => request<CaptureInfo[]>("GET", `/labs/${enc(lab)}/captures`),
  startCapture: (lab: string, link: string, opts: { duration_s?: number; max_packets?: number; endpoint?: number }) =>
    request<CaptureInfo>("POST", `/labs/${enc(lab)}/links/${enc(link)}/captures`, opts),
  stopCapture: (lab: string, id: string) => request<void>("POST", `/labs/${enc(lab)}/captures/${enc(id)}/stop`),
  layout: (lab: string) => request<Layout>("GET", `/labs/${enc(lab)}/layout`),
  saveLayout: (lab: string, positions: Layout["positions"]) =>
    request<Layout>("PUT", `/labs/${enc(lab)}/layout`, { positions }),
  operation: (id: string) => request<Operation>("GET", `/operations/${enc(id)}`),
  operations: () => request<Operation[]>("GET", "/operations"),
  functions: () => request<FunctionInfo[]>("GET", "/functions"),
  deployFunction: (f: { name: string; run: string; image: string; memory: string; timeout_secs: number; concurrency: number }) =>
    request<Operation>("POST", "/functions", f),
  invokeFunction: (name: string, stdin: string) =>
    request<InvocationResult>("POST", `/functions/${enc(name)}/invoke`, stdin, true, "application/octet-stream"),
  deleteFunction: (name: string) => request<void>("DELETE", `/functions/${enc(name)}`),
  checkpoints: (lab: string) => request<CheckpointInfo[]>("GET", `/labs/${enc(lab)}/checkpoints`),
  createCheckpoint: (lab: string, name: string) => request<Operation>("POST", `/labs/${enc(lab)}/checkpoints`, { name }),
  restoreCheckpoint: (lab: string, name: string) =>
    request<Operation>("POST", `/labs/${enc(lab)}/checkpoints/${enc(name)}/restore`),
  deleteCheckpoint: (lab: string, name: string) => request<void>("DELETE", `/labs/${enc(lab)}/checkpoints/${enc(name)}`),
  cancelOperation: (id: string) => request<Operation>("POST", `/operations/${enc(id)}/cancel`),
  runScenario: (lab: string, text: string, file = "scenario.yaml") =>
    request<Operation>("POST", `/labs/${enc(lab)}/scenarios?file=${enc(file)}`, text, true, "application/yaml"),
  linkState: (lab: string, link: string, up: boolean) =>
    request<LinkInfo>("POST", `/labs/${enc(lab)}/links/${enc(link)}/${up ? "up" : "down"}`),
  impair: (lab: string, link: string, imp: Record<string, string>) =>
    request<LinkInfo>("POST", `/labs/${enc(lab)}/links/${enc(link)}/impair`, imp),
  clearImpair: (lab: string, link: string) =>
    request<LinkInfo>("DELETE", `/labs/${enc(lab)}/links/${enc(link)}/impair`),
  exec: (vm: string, argv: string[], timeout = 30) =>
    request<ExecResult>("POST", `/vms/${enc(vm)}/exec`, { argv, timeout }),
  templates: () => request<TemplateInfo[]>("GET", "/templates"),
  images: () => request<ImageInfo[]>("GET", "/images"),
  users: () => request<User[]>("GET", "/users"),
  createUser: (u: {
    name: string;
    role: Role;
    password?: string;
    max_vms?: number;
    max_memory_mib?: number;
  }) => request<{ user: User; password: string | null }>("POST", "/users", u),
  updateUser: (name: string, patch: Record<string, unknown>) =>
    request<User>("PATCH", `/users/${enc(name)}`, patch),
  deleteUser: (name: string) => request<void>("DELETE", `/users/${enc(name)}`),
  tokens: (all: boolean) => request<ApiToken[]>("GET", `/tokens${all ? "?all=true" : ""}`),
  createToken: (name: string, expires_days?: number) =>
    request<{ token: ApiToken; secret: string }>("POST", "/tokens", { name, expires_days }),
  revokeToken: (id: string) => request<void>("DELETE", `/tokens/${enc(id)}`),
  audit: () => request<AuditEntry[]>("GET", "/audit?limit=200"),
};

/** Fetches a file of the API with the session's token and hands it to the browser as a
 * download named `name` (a plain link could not send the token). */
export async function download(path: string, name: string): Promise<number> {
  const get = () =>
    fetch(`/api/v1${path}`, { headers: session ? { Authorization: `Bearer ${session.access}` } : {} }).catch((e) => {
      throw new ApiError(0, "network", `cannot reach the server (${errorText(e)}): try again`);
    });
  let r = await get();
  if (r.status === 401 && session && (await refresh())) r = await get();
  if (!r.ok) {
    const j = (await r.json().catch(() => null)) as { error?: { code?: string; message?: string } } | null;
    throw new ApiError(r.status, j?.error?.code ?? `http_${r.status}`, j?.error?.message ?? `GET ${path}: HTTP ${r.status}`);
  }
  const blob = await r.blob();
  saveBlob(blob, name);
  return blob.size;
}

/** Polls operation `id` (every 400 ms) until it ends. Resolves when it succeeded, throws its
 * error otherwise; resolves `false` without waiting further once `alive()` says the page that
 * asked is gone. */
export async function waitOperation(id: string, what: string, alive: () => boolean): Promise<boolean> {
  for (;;) {
    await new Promise((r) => window.setTimeout(r, 400));
    if (!alive()) return false;
    const o = await api.operation(id);
    if (o.state === "running") continue;
    if (o.state !== "succeeded") throw new Error(o.error ?? `${what}: ${o.state}`);
    return true;
  }
}

/** Hands `blob` to the browser as a download named `name`. */
export function saveBlob(blob: Blob, name: string) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  window.setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

/** A WebSocket URL on this server with a single-use ticket in the query (browsers cannot set
 * headers on WebSockets; a ticket, unlike the access token, is worthless once used). */
export async function wsUrl(path: string, query: Record<string, string> = {}): Promise<string> {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const { ticket } = await request<{ ticket: string }>("POST", "/auth/ticket");
  const q = new URLSearchParams({ ...query, ticket });
  return `${proto}//${location.host}/api/v1${path}?${q}`;
}

export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

export function canWrite(u: User | null): boolean {
  return !!u && u.role !== "viewer";
}
