#!/usr/bin/env bash
# Fuzz the snapshot decoder: both targets for FUZZ_SECONDS each (default 30), seeded with
# real snapshots. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 enables them on stable.
# A crash leaves its input under fuzz/artifacts/ and fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
seconds=${FUZZ_SECONDS:-30}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked
fi
corpus=fuzz/corpus
mkdir -p "$corpus/snapshot_restore" "$corpus/snapshot_body"
seeds=$(mktemp -d)
cargo run --quiet -p ledger --example seed_snapshots -- "$seeds"
cp "$seeds"/*.snap "$corpus/snapshot_restore/"
cp "$seeds"/*.body "$corpus/snapshot_body/"
rm -rf "$seeds"
export RUSTC_BOOTSTRAP=1
for target in snapshot_restore snapshot_body; do
    echo "==> fuzzing $target for ${seconds}s"
    (cd fuzz && CARGO_TARGET_DIR=target cargo fuzz run "$target" -- -max_total_time="$seconds" -max_len=65536 2>&1 | tail -n 5)
done
echo "==> fuzz smoke passed"
