#!/usr/bin/env bash
# The long jepsen/ suite: the canaries (builds of ticketd with a planted bug, each must be
# found invalid while the correct build is found valid under the same seed), then every
# nemesis on 5 nodes over many seeds. Needs root (network namespaces).
#
#   scripts/jepsen-long.sh [--seeds N] [--seconds S] [--seed FIRST] [--out DIR] [--canaries-only] [--no-canaries]
#
# Canary builds are the `ticketd-canary` binary (node's required feature `canary`): they reuse
# the dev profile's dependencies and never replace target/debug/ticketd; each is copied to
# target/jepsen-canaries/ (2-6 minutes each on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
SEEDS=10
SECS=60
SEED=1
OUT=$CARGO_TARGET_DIR/jepsen-long/$(date +%s)
CANARIES_ONLY=0
NO_CANARIES=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) SEEDS=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --canaries-only) CANARIES_ONLY=1; shift ;;
        --no-canaries) NO_CANARIES=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "jepsen-long: skipped: needs root for network namespaces (partitions, netem)" >&2
    exit 0
fi
# JEPSEN_BIN_DIR=DIR: use DIR/jepsen and DIR/ticketd (copies that other builds of the shared
# target directory cannot replace in the middle of the suite) and skip the build.
if [ -n "${JEPSEN_BIN_DIR:-}" ]; then
    JEPSEN=$JEPSEN_BIN_DIR/jepsen
    TICKETD=$JEPSEN_BIN_DIR/ticketd
else
    cargo build -p node --bin ticketd -p jepsen --bin jepsen
    JEPSEN=$CARGO_TARGET_DIR/debug/jepsen
    TICKETD=$CARGO_TARGET_DIR/debug/ticketd
fi
"$JEPSEN" cleanup >/dev/null
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"

# name  nemeses            extra options
CANARIES=(
    "stale-follower-reads partition,pause"
    "ack-before-commit partition,pause"
    "skip-hold-expiry kill,pause"
    "skip-admission kill,pause"
)
[ "$NO_CANARIES" = 1 ] && CANARIES=()
for entry in "${CANARIES[@]}"; do
    read -r name nem <<<"$entry"
    mkdir -p "$CARGO_TARGET_DIR/jepsen-canaries"
    bin=$CARGO_TARGET_DIR/jepsen-canaries/ticketd-canary-$name
    echo "==> canary $name: building ($bin)"
    cargo build -p node --bin ticketd-canary --features "canary-$name"
    cp "$CARGO_TARGET_DIR/debug/ticketd-canary" "$bin"
    # The skip-hold-expiry build keeps expired holds live, which its own snapshot check
    # refuses: no snapshots in its run.
    snap=()
    [ "$name" = skip-hold-expiry ] && snap=(--snapshot-every 1000000)
    echo "==> canary $name: must be found invalid (seed $SEED, nemeses $nem)"
    "$JEPSEN" run --nodes 3 --time-limit 25 --nemesis "$nem" --seed "$SEED" --ticketd "$bin" \
        --out "$OUT/canary-$name" --expect invalid "${snap[@]}"
    echo "canary $name: invalid as expected ($OUT/canary-$name)" >> "$SUMMARY"
    echo "==> the correct build, same seed and nemeses: must be found valid"
    "$JEPSEN" run --nodes 3 --time-limit 25 --nemesis "$nem" --seed "$SEED" \
        --ticketd "$TICKETD" --out "$OUT/correct-$name" --expect valid "${snap[@]}"
    echo "correct build with canary $name's seed: valid ($OUT/correct-$name)" >> "$SUMMARY"
done
if [ "$CANARIES_ONLY" = 1 ]; then
    cat "$SUMMARY"
    exit 0
fi

# One row per run: verdict, operations, faults by kind, checkers that were not valid.
row() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys, collections
seed, verdict, d = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    r = json.load(open(f"{d}/results.json"))
    ops = r["ops"]
    bad = ",".join(f"{c['checker']}:{c['valid']}" for c in r["checks"] if c["valid"] != "valid") or "-"
    checked = sum(c["checked"] for c in r["checks"])
except Exception:
    ops, bad, checked = "?", "no results", "?"
kinds, failed = collections.Counter(), 0
try:
    for line in open(f"{d}/nemesis.jsonl"):
        b = json.loads(line)
        kinds[b["fault"]] += 1
        failed += 1 if b.get("error") else 0
except Exception:
    pass
faults = " ".join(f"{k}x{v}" for k, v in sorted(kinds.items()))
print(f"| {seed} | {verdict} | {ops} | {checked} | {sum(kinds.values())} ({failed} failed) | {faults} | {bad} |")
PY
}
TABLE=$OUT/table.md
echo "| seed | verdict | ops | checked | faults | by kind | not valid |" > "$TABLE"
echo "|---|---|---|---|---|---|---|" >> "$TABLE"
failed=0
for i in $(seq 0 $((SEEDS - 1))); do
    s=$((SEED + i))
    echo "==> long run $((i + 1))/$SEEDS: 5 nodes, every nemesis, $SECS s, seed $s"
    if "$JEPSEN" run --nodes 5 --time-limit "$SECS" --nemesis all --seed "$s" --clients 10 \
        --ticketd "$TICKETD" --out "$OUT/all-$s"; then
        verdict=valid
    else
        rc=$?
        verdict=$([ $rc -eq 1 ] && echo invalid || ([ $rc -eq 2 ] && echo unknown || echo error))
        failed=1
    fi
    row "$s" "$verdict" "$OUT/all-$s" | tee -a "$TABLE"
    echo "seed $s: $verdict ($OUT/all-$s)" >> "$SUMMARY"
done
echo "==> summary"
cat "$SUMMARY"
cat "$TABLE"
exit $failed
