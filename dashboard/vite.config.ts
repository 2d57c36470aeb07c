// The bundle is served by `asyncgate-server --dashboard` under /dashboard/,
// from the files embedded at build time: the output goes to server/dashboard.
import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

export default defineConfig({
  base: "/dashboard/",
  plugins: [preact()],
  // `npm run dev`: the page's API calls (same-origin, as when the gateway
  // serves it) are proxied to a gateway started with --grpc-web.
  server: {
    proxy: {
      "/asyncgate.v1.": process.env.ASYNCGATE_URL ?? "http://127.0.0.1:50051",
    },
  },
  build: {
    outDir: "../server/dashboard",
    emptyOutDir: true,
    // One small bundle: no source maps shipped inside the binary.
    sourcemap: false,
    target: "es2022",
  },
});
