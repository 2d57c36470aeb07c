// The bundle is served by `asyncgate-server --dashboard` under /dashboard/,
// from the files embedded at build time: the output goes to server/dashboard.
import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

export default defineConfig({
  base: "/dashboard/",
  plugins: [preact()],
  build: {
    outDir: "../server/dashboard",
    emptyOutDir: true,
    // One small bundle: no source maps shipped inside the binary.
    sourcemap: false,
    target: "es2022",
  },
});
