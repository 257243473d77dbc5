#!/usr/bin/env bash
# Overload (issue 9): an open-loop hold workload far above what the cluster sustains, against
# a fresh 3-node dev cluster, sampling each ticketd's RSS from /proc every second. What it
# shows: whether memory stays bounded and the cluster answers 503/429 quickly instead of
# letting requests time out. Writes bench/results/overload.json and overload.svg.
#
#   bench/overload.sh [RATE]      # default 90000/s (about 10x the closed-loop hold rate here)
#
# Knobs: DURATION (s, default 20), MAX_INFLIGHT (loadgen's bound, default 20000),
# BIN_DIR (prebuilt ticketd/ticketctl/loadgen), OUT (results dir), NAME (result file name,
# default overload), TICKETD_ARGS (e.g. "--max-inflight=1024"). Dev profile only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
RATE=${1:-90000}
DURATION=${DURATION:-20}
MAX_INFLIGHT=${MAX_INFLIGHT:-20000}
OUT=${OUT:-bench/results}
NAME=${NAME:-overload}
TICKETD_ARGS=${TICKETD_ARGS:-}
if [ -n "${BIN_DIR:-}" ]; then
    bin=$BIN_DIR
else
    cargo build --bins -p node -p client -p loadgen
    bin="$CARGO_TARGET_DIR/debug"
fi
work=$(mktemp -d /tmp/bench-overload.XXXXXX)
trap '"$bin/ticketctl" dev down --dir "$work/tl" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
tl_args=()
for a in $TICKETD_ARGS; do tl_args+=("--ticketd-arg=$a"); done
"$bin/ticketctl" dev up --nodes 3 --dir "$work/tl" "${tl_args[@]}"
mkdir -p "$OUT"
"$bin/loadgen" run --system ticketledger --cluster-dir "$work/tl" --watch-cluster --workload hold \
    --rate "$RATE" --max-inflight "$MAX_INFLIGHT" --duration-secs "$DURATION" --warmup-secs 2 \
    --timeout-ms 10000 --json "$OUT/$NAME.json" --svg "$OUT/$NAME.svg"
