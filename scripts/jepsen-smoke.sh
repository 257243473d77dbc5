#!/usr/bin/env bash
# The jepsen/ smoke (CI): a 3-node cluster in network namespaces under kill, pause and
# partition faults for ~40 s of workload, checked, then 30 s more with the holds and confirms
# over the gRPC Pipeline (--pipeline); about two minutes in all once built.
# Without root there are no namespaces: it runs on loopback with kill and pause only.
#
#   scripts/jepsen-smoke.sh                 # the correct build must be found valid
#   JEPSEN_CANARIES=1 scripts/jepsen-smoke.sh   # also: each canary build must be found invalid
#   SEED=7 JEPSEN_SECONDS=60 scripts/jepsen-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
announce_build
SEED=${SEED:-20261201}
SECONDS_RUN=${JEPSEN_SECONDS:-40}
OUT=${JEPSEN_OUT:-$CARGO_TARGET_DIR/jepsen-smoke/$(date +%s)}
echo "==> building ticketd and jepsen (dev profile)"
cargo build -p node --bin ticketd -p jepsen --bin jepsen
JEPSEN=$CARGO_TARGET_DIR/debug/jepsen
"$JEPSEN" cleanup >/dev/null
if [ "$(id -u)" -eq 0 ]; then
    NEMESIS=kill,pause,partition
    NET=()
else
    echo "==> not root: no network namespaces, so loopback with kill and pause only (partitions untested)"
    NEMESIS=kill,pause
    NET=(--loopback)
fi
echo "==> jepsen run: 3 nodes, $SECONDS_RUN s, nemeses $NEMESIS, seed $SEED, into $OUT"
"$JEPSEN" run --nodes 3 --time-limit "$SECONDS_RUN" --nemesis "$NEMESIS" --seed "$SEED" \
    --ticketd "$CARGO_TARGET_DIR/debug/ticketd" --out "$OUT/correct" --expect valid "${NET[@]}"
echo "==> jepsen run: the same over the gRPC Pipeline (holds and confirms pipelined), 30 s"
"$JEPSEN" run --nodes 3 --time-limit 30 --nemesis "$NEMESIS" --seed "$((SEED + 1))" --pipeline \
    --ticketd "$CARGO_TARGET_DIR/debug/ticketd" --out "$OUT/pipeline" --expect valid "${NET[@]}"

if [ "${JEPSEN_CANARIES:-0}" = 1 ]; then
    scripts/jepsen-long.sh --canaries-only --seed "$SEED" --out "$OUT"
fi
echo "==> jepsen smoke passed ($OUT)"
