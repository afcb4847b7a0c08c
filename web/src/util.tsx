import { useEffect, useRef, useState } from "react";
import { subscribe, type KEvent } from "./events";

export function ago(ms: number): string {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

/** A size in bytes as people read it: 812 B, 96 KiB, 4.5 MiB, 130 MiB. */
export function bytes(n: number): string {
  if (n < 10_000) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KiB`;
  const m = n / (1024 * 1024);
  return `${m.toFixed(m < 10 ? 1 : 0)} MiB`;
}

export function StateBadge({ state }: { state: string }) {
  return (
    <span className={`badge state-${state}`} data-state={state}>
      {state.replace("_", " ")}
    </span>
  );
}

/** Calls `f` for each event (the latest `f`, without resubscribing). */
export function useEvents(f: (e: KEvent) => void) {
  const ref = useRef(f);
  ref.current = f;
  useEffect(() => subscribe((e) => ref.current(e)), []);
}

/** Loads `load()` now and whenever `reload` is called; keeps the last good value. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    load().then(
      (d) => {
        if (live) {
          setData(d);
          setError(null);
        }
      },
      (e) => live && setError(e),
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, n]);
  return { data, error, reload: () => setN((x) => x + 1), setData };
}

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const msg = error instanceof Error ? error.message : String(error);
  return (
    <p className="error" role="alert">
      {msg}
    </p>
  );
}
