#!/usr/bin/env bash
# The whole test suite: unit, property, storage and multi-node tests of every crate.
# Usage: scripts/test.sh [extra cargo-nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
announce_build
# The multi-node tests start real ticketd processes: build the binaries first.
cargo build --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
    # nextest does not run doctests.
    cargo test --workspace --doc --quiet
else
    echo "==> cargo-nextest not found; using cargo test"
    cargo test --workspace --no-fail-fast "$@"
fi
