#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one
# after another, each as a single libFuzzer process (no -jobs/-workers: the
# machines are small and shared), and prints the executions per target.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS    the targets to run (default: every target, `cargo fuzz list`)
#   FUZZ_SANITIZER  address | none (default none: the workspace forbids
#                   unsafe code, and AddressSanitizer halves the speed)
#   FUZZ_ARGS       more libFuzzer flags, e.g. "-max_len=8192"
#
# Installs nothing: it needs a nightly toolchain and cargo-fuzz, and says
# how to install them when they are missing. Corpora are kept in
# fuzz/corpus/<target> (so each run goes on from the last), crashes in
# fuzz/artifacts/<target>, logs in fuzz/logs/<target>.log; none of them is
# committed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
case $seconds in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]  (seconds per target, default 60)" >&2
    exit 64
    ;;
esac
sanitizer=${FUZZ_SANITIZER:-none}

missing=0
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "a nightly toolchain is missing; install it with:" >&2
    echo "    rustup toolchain install nightly --profile minimal" >&2
    missing=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing; install it with:" >&2
    echo "    cargo install cargo-fuzz --locked" >&2
    missing=1
fi
if [ "$missing" -ne 0 ]; then
    exit 1
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}

# Build once (every target, same flags as the runs below, so `fuzz run`
# reuses the build instead of rebuilding).
echo "== building fuzz targets (sanitizer: $sanitizer)" >&2
cargo +nightly fuzz build --sanitizer "$sanitizer"

mkdir -p logs
summary=()
failed=0
for target in $targets; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="logs/$target.log"
    echo "== $target for ${seconds}s (log: fuzz/$log)" >&2
    status=0
    started=$SECONDS
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=30 \
        ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
    elapsed=$((SECONDS - started))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
    corpus=$(find "corpus/$target" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        outcome="no findings"
    else
        outcome="FAILED (exit $status): see fuzz/$log and fuzz/artifacts/$target"
        failed=1
    fi
    line="$target: ${elapsed}s, ${execs:-?} executions, corpus $corpus inputs, $outcome"
    echo "$line" >&2
    summary+=("$line")
done

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
exit "$failed"
