import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` serves the UI with hot reload and forwards the API to a running
// `kobako serve` (KOBAKO_API, default https://127.0.0.1:8443, self-signed certificate).
declare const process: { env: Record<string, string | undefined> };
const api = process.env.KOBAKO_API ?? "https://127.0.0.1:8443";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // ELK (elkjs, 1.4 MB) is one chunk loaded when a topology is first drawn, never on the
    // first page.
    chunkSizeWarningLimit: 1500,
    rollupOptions: {
      output: {
        // Libraries change less often than the app: separate, long-cached chunks.
        manualChunks(id: string) {
          if (!id.includes("node_modules")) return undefined;
          if (/node_modules\/(react|react-dom|scheduler)\//.test(id)) return "react";
          if (id.includes("@xterm")) return "xterm";
          if (/@xyflow|d3-|zustand|classcat/.test(id)) return "flow";
          return undefined;
        },
      },
    },
  },
  server: {
    proxy: { "/api": { target: api, secure: false, ws: true, changeOrigin: true } },
  },
});
