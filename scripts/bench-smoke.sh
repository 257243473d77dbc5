#!/usr/bin/env bash
# CI smoke of the benchmarks: every harness runs once, briefly. No timing is asserted;
# performance lives in the full runs (cargo bench -p ledger --bench ledger; storebench).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "==> ledger criterion benches, once each (test mode)"
cargo test --quiet -p ledger --benches
echo "==> storage benchmark, 0.2 s per measurement"
out=$(mktemp -d)
cargo run --quiet -p raft-store --bin storebench -- --dir "$out" --seconds 0.2 --json "$out/storebench.json"
test -s "$out/storebench.json"
rm -rf "$out"
