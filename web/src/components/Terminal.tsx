// A VM's serial console or a shell (exec TTY) in the page: xterm.js over the API's WebSocket.
import { useEffect, useRef, useState } from "react";
import { Terminal as XTerm } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import { wsUrl } from "../api";

export function Terminal({
  vm,
  mode,
  onClose,
}: {
  vm: string;
  mode: "console" | "shell";
  onClose: () => void;
}) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState("connecting…");

  useEffect(() => {
    const term = new XTerm({
      fontSize: 13,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
      cursorBlink: true,
      convertEol: mode === "console",
      scrollback: 2000,
      theme: { background: "#111418" },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current!);
    fit.fit();
    const url =
      mode === "console"
        ? wsUrl(`/vms/${encodeURIComponent(vm)}/console`)
        : wsUrl(`/vms/${encodeURIComponent(vm)}/tty`, {
            rows: String(term.rows),
            cols: String(term.cols),
          });
    let ws: WebSocket | null = null;
    let gone = false;
    const enc = new TextEncoder();
    url.then(
      (u) => {
        if (gone) return;
        const sock = new WebSocket(u);
        ws = sock;
        sock.binaryType = "arraybuffer";
        sock.onopen = () => {
          setStatus("connected");
          term.focus();
          // The serial console prints nothing until asked: a newline shows the prompt.
          if (mode === "console") sock.send(enc.encode("\r"));
          // The terminal may have been fitted to its box after the URL was made: tell the pty.
          else sock.send(JSON.stringify({ resize: { rows: term.rows, cols: term.cols } }));
        };
        sock.onmessage = (m) => {
          if (typeof m.data === "string") {
            try {
              const j = JSON.parse(m.data) as { exited?: { code: number }; error?: string };
              if (j.exited) setStatus(`exited with code ${j.exited.code}`);
              else if (j.error) setStatus(`error: ${j.error}`);
            } catch {
              term.write(m.data);
            }
          } else term.write(new Uint8Array(m.data as ArrayBuffer));
        };
        sock.onclose = (e) =>
          setStatus((s) => (s.startsWith("exited") ? s : `disconnected${e.reason ? ": " + e.reason : ""}`));
        sock.onerror = () => setStatus("could not connect (is the VM running?)");
      },
      () => setStatus("could not connect (signed out?)"),
    );
    const data = term.onData((d) => {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    const resize = term.onResize(({ rows, cols }) => {
      if (mode === "shell" && ws && ws.readyState === WebSocket.OPEN)
        ws.send(JSON.stringify({ resize: { rows, cols } }));
    });
    const ro = new ResizeObserver(() => fit.fit());
    ro.observe(box.current!);
    return () => {
      ro.disconnect();
      data.dispose();
      resize.dispose();
      gone = true;
      ws?.close();
      term.dispose();
    };
  }, [vm, mode]);

  return (
    <section className="terminal" aria-label={`${mode === "console" ? "Console" : "Shell"} of ${vm}`}>
      <header>
        <strong>
          {mode === "console" ? "Serial console" : "Shell"} · {vm}
        </strong>
        <span className="termstatus" role="status">
          {status}
        </span>
        <button type="button" onClick={onClose}>
          Close
        </button>
      </header>
      <div className="termbox" ref={box} data-terminal={vm} />
    </section>
  );
}
