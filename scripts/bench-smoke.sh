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
# Built with the workspace (as scripts/test.sh builds it): `cargo run -p raft-store` alone
# unifies other features and compiles RocksDB a second time (~10 minutes cold).
cargo build --quiet --workspace --bins
"$CARGO_TARGET_DIR/debug/storebench" --dir "$out" --seconds 0.2 --json "$out/storebench.json"
test -s "$out/storebench.json"
rm -rf "$out"
echo "==> loadgen: every workload for 1 s on a 3-node dev cluster, then a comparison"
cargo build --quiet --bins -p node -p client -p loadgen
bin="$CARGO_TARGET_DIR/debug"
lg=$(mktemp -d)
trap '"$bin/ticketctl" dev down --dir "$lg/tl" >/dev/null 2>&1 || true; rm -rf "$lg"' EXIT
"$bin/ticketctl" dev up --nodes 3 --dir "$lg/tl" >/dev/null
for w in hold hold-confirm queue read mix; do
    "$bin/loadgen" run --system ticketledger --cluster-dir "$lg/tl" --watch-cluster --workload "$w" \
        --clients 4 --duration-secs 1 --warmup-secs 0 --performances 2 --sections 1 --rows 10 \
        --seats-per-row 10 --buyers 20 --rooms 2 --read-slots 10 --min-completed 1 --json "$lg/$w.json" --svg "$lg/$w.svg"
done
# The pipelined gRPC calls (Ledger.Pipeline) for the workloads that use them.
mkdir -p "$lg/pipeline"
for w in hold hold-confirm; do
    "$bin/loadgen" run --system ticketledger --cluster-dir "$lg/tl" --workload "$w" --tl-protocol grpc-pipeline \
        --clients 4 --duration-secs 1 --warmup-secs 0 --performances 2 --sections 1 --rows 10 \
        --seats-per-row 10 --buyers 20 --min-completed 1 --json "$lg/pipeline/$w.json"
done
"$bin/loadgen" compare "$lg"/*.json --json "$lg/peers.json" --svg "$lg/peers.svg" >/dev/null
test -s "$lg/peers.json" && test -s "$lg/peers.svg"
echo "==> overload harness: open loop at 2x a 1-second closed-loop rate, over gRPC (no timing asserted)"
BIN_DIR="$bin" OUT="$lg/overload" MULT=2 BASE_SECS=1 BASE_CLIENTS=4 DURATION=1 LG_INFLIGHT=64 \
    LAYOUT="--performances 2 --sections 1 --rows 10 --seats-per-row 10 --buyers 20" \
    scripts/bench-overload.sh >/dev/null
test -s "$lg/overload/overload.json" && test -s "$lg/overload/overload-base.json"
