#!/usr/bin/env bash
# Rebuilds the dashboard bundle that `asyncgate-server --dashboard` embeds
# (server/dashboard/, committed so that `cargo build` needs no Node): the
# locked npm packages (`npm ci`), the client code generated from proto/
# (buf + protoc-gen-es into dashboard/src/gen), a type check, `vite build`.
# Prints the bundle's gzipped size (budget: 300 KiB).
set -euo pipefail
cd "$(dirname "$0")/../dashboard"
npm ci --no-audit --no-fund
npm run gen
npm run build
out=../server/dashboard
total=0
while IFS= read -r -d '' f; do
    size=$(gzip -9 -c "$f" | wc -c)
    total=$((total + size))
    printf '%8d B gzipped  %s\n' "$size" "${f#"$out"/}"
done < <(find "$out" -type f -print0 | sort -z)
printf 'dashboard: %d B gzipped (%d KiB; budget 300 KiB)\n' "$total" $(((total + 1023) / 1024))
if [ "$total" -gt $((300 * 1024)) ]; then
    echo "over the 300 KiB budget" >&2
    exit 1
fi
