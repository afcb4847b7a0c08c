// A tiny history router: the server answers every app path with index.html.
import { useEffect, useState, type AnchorHTMLAttributes, type MouseEvent } from "react";

const subs = new Set<() => void>();

export function navigate(to: string, replace = false) {
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  subs.forEach((s) => s());
}

window.addEventListener("popstate", () => subs.forEach((s) => s()));

export function usePath(): string {
  const [p, setP] = useState(location.pathname);
  useEffect(() => {
    const s = () => setP(location.pathname);
    subs.add(s);
    return () => {
      subs.delete(s);
    };
  }, []);
  return p;
}

export function Link({ to, ...rest }: { to: string } & AnchorHTMLAttributes<HTMLAnchorElement>) {
  const click = (e: MouseEvent<HTMLAnchorElement>) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(to);
  };
  return <a href={to} onClick={click} {...rest} />;
}
