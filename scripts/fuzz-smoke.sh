#!/usr/bin/env bash
# Fuzz the snapshot decoder: each target for FUZZ_SECONDS (default 30), seeded with real
# snapshots (crates/ledger/examples/seed_snapshots.rs). cargo-fuzz needs nightly flags;
# RUSTC_BOOTSTRAP=1 enables them on stable. A crash prints the fuzzer's log, leaves its input
# under fuzz/artifacts/<target>/ (replay: cargo fuzz run <target> <file>) and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
seconds=${FUZZ_SECONDS:-30}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked
fi
corpus=fuzz/corpus
mkdir -p "$corpus/snapshot_restore" "$corpus/snapshot_body" "$corpus/snapshot_then_apply"
seeds=$(mktemp -d)
cargo run --quiet -p ledger --example seed_snapshots -- "$seeds"
cp "$seeds"/*.snap "$corpus/snapshot_restore/"
cp "$seeds"/*.body "$corpus/snapshot_body/"
cp "$seeds"/*.body "$corpus/snapshot_then_apply/"
rm -rf "$seeds"
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
for target in snapshot_restore snapshot_body snapshot_then_apply; do
    echo "==> fuzzing $target for ${seconds}s"
    if ! (cd fuzz && CARGO_TARGET_DIR=target cargo fuzz run "$target" -- \
        -max_total_time="$seconds" -max_len=65536) >"$log" 2>&1; then
        cat "$log"
        echo "==> $target crashed; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^Done [0-9]+ runs" "$log" || tail -n 3 "$log"
done
rm -f "$log"
echo "==> fuzz smoke passed"
