#!/usr/bin/env bash
# BENCHMARKS.md section 23: `asyncgate bench --mode e2e` at c=64 against a
# release gateway started with --dashboard, ROUNDS times a run with no
# browser then a run with the dashboard open (the dashboard_load example:
# two headless Chromiums, on the overview and on the ticket list). Prints
# the bench rows and the pages' renders per second.
#   cargo build --release -p asyncgate-cli -p asyncgate-server
#   cargo build -p asyncgate-tests --example dashboard_load
#   ROUNDS=4 scripts/bench-dashboard.sh
set -u
TARGET=${CARGO_TARGET_DIR:-target}
GW=$TARGET/release/asyncgate-server
CLI=$TARGET/release/asyncgate
LOAD=$TARGET/debug/examples/dashboard_load
PORT=${PORT:-50171}
URL=http://127.0.0.1:$PORT
ROUNDS=${ROUNDS:-3}
$GW --store memory --dashboard --listen 127.0.0.1:$PORT > /dev/null 2>&1 &
GWPID=$!
trap 'kill $GWPID' EXIT
sleep 1
bench() { $CLI --server $URL bench --mode e2e --concurrency 64 --duration 10s --warmup 2s --server-pid $GWPID 2>/dev/null | grep "^remote"; }
for round in $(seq 1 "$ROUNDS"); do
  echo "closed $(bench)"
  $LOAD $URL 17 > /tmp/bench-dashboard-load.txt 2>&1 &
  LP=$!
  sleep 4
  echo "open   $(bench)"
  wait $LP
  grep renders /tmp/bench-dashboard-load.txt
done
