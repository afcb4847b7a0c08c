// The server's event stream (SSE, /api/v1/events): one EventSource for the page, resumed
// after the last event id when it has to be reopened (new access token, server restart).
// EventSource cannot send an Authorization header: each opening trades the access token for a
// single-use ticket (POST /auth/ticket), so no token ends up in a URL (or a proxy's log).
import { accessToken, onSession, request } from "./api";

export interface KEvent {
  id: number;
  ts_ms: number;
  lab: string | null;
  vm: string | null;
  kind: string;
  data: Record<string, unknown>;
}

type Listener = (e: KEvent) => void;
const listeners = new Set<Listener>();
let es: EventSource | null = null;
let lastId: number | null = null;
let retry: number | undefined;
let token: string | null = null;
let opening = 0;

const KINDS = [
  "lab.state",
  "vm.state",
  "link.state",
  "link.impairment",
  "op.progress",
  "op.state",
  "lab.created",
  "lab.deleted",
  "message",
];

async function open() {
  close();
  token = accessToken();
  if (!token || listeners.size === 0) return;
  const mine = ++opening;
  let ticket: string;
  try {
    ticket = (await request<{ ticket: string }>("POST", "/auth/ticket")).ticket;
  } catch {
    if (mine === opening) retry = window.setTimeout(open, 1000);
    return;
  }
  // Closed, or opened again, while the ticket was on its way.
  if (mine !== opening || listeners.size === 0) return;
  const q = new URLSearchParams({ ticket });
  if (lastId !== null) q.set("after", String(lastId));
  const src = new EventSource(`/api/v1/events?${q}`);
  es = src;
  const handle = (m: MessageEvent) => {
    try {
      const e = JSON.parse(m.data as string) as KEvent;
      lastId = e.id;
      listeners.forEach((l) => l(e));
    } catch {
      // keep-alive or unexpected data
    }
  };
  for (const k of KINDS) src.addEventListener(k, handle as EventListener);
  src.onerror = () => {
    // The browser retries by itself with the same (used-up) ticket, which is refused: the
    // stream is CLOSED then (also after an expired token, the server gone, or the server
    // ending the session): reopen with a new ticket.
    if (src.readyState !== EventSource.OPEN && es === src) {
      src.close();
      window.clearTimeout(retry);
      retry = window.setTimeout(open, 1000);
    }
  };
}

function close() {
  opening++;
  window.clearTimeout(retry);
  es?.close();
  es = null;
}

onSession(() => {
  if (accessToken() !== token) {
    if (accessToken()) open();
    else close();
  }
});

/** Calls `l` for every event from now on; returns the unsubscribe function. */
export function subscribe(l: Listener): () => void {
  listeners.add(l);
  if (!es) open();
  return () => {
    listeners.delete(l);
    if (listeners.size === 0) close();
  };
}
