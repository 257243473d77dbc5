#!/usr/bin/env bash
# Where the CPU goes per request (issue 9): a fresh 3-node dev cluster, one closed-loop
# loadgen run, and the CPU time (user + system, /proc/<pid>/stat) of each ticketd and of
# the loadgen over the measured window divided by the completed requests. CPU per request is
# robust to a shared machine (throughput is not). With PERF=1 it also samples the leader
# with `perf record` (software clock, no frame pointers needed for the flat profile) and
# prints its hottest symbols and shared objects.
#
#   scripts/bench-profile.sh                     # hold, 256 clients, 10 s
#   PERF=1 scripts/bench-profile.sh              # plus the leader's flat profile
#   WORKLOAD=hold-confirm CLIENTS=64 scripts/bench-profile.sh
#
# Knobs: WORKLOAD, CLIENTS, DURATION, WARMUP, PERF (1: perf the leader), PERF_FREQ (Hz),
# PERF_CALLGRAPH (e.g. "dwarf,32768"; default none: flat), PERF_PID (leader|all), OUT (dir
# for the JSON and perf data; default a temp dir, printed), BIN_DIR (prebuilt binaries),
# TICKETD_ARGS (extra ticketd flags), LOADGEN_ARGS (extra loadgen flags). Dev profile only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
WORKLOAD=${WORKLOAD:-hold}
CLIENTS=${CLIENTS:-256}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
PERF=${PERF:-0}
PERF_FREQ=${PERF_FREQ:-499}
PERF_CALLGRAPH=${PERF_CALLGRAPH:-}
TICKETD_ARGS=${TICKETD_ARGS:-}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
if [ -n "${BIN_DIR:-}" ]; then
    bin=$BIN_DIR
else
    cargo build --bins -p node -p client -p loadgen
    bin="$CARGO_TARGET_DIR/debug"
fi
work=$(mktemp -d /tmp/bench-profile.XXXXXX)
OUT=${OUT:-$work/out}
mkdir -p "$OUT"
perf_pid=""
cleanup() {
    set +e
    # The perf job is perf itself once recording, else a subshell still waiting for the
    # loadgen (a loadgen that failed early): interrupt its child too, or bash waits for the
    # child and the loop goes on, and this cleanup never stops the cluster.
    if [ -n "$perf_pid" ]; then
        pkill -INT -P "$perf_pid" 2>/dev/null
        kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null
    fi
    "$bin/ticketctl" dev down --dir "$work/tl" >/dev/null 2>&1
    rm -rf "$work/tl"
    [ "$OUT" = "$work/out" ] || rm -rf "$work"
}
trap cleanup EXIT
tl_args=()
for a in $TICKETD_ARGS; do tl_args+=("--ticketd-arg=$a"); done
"$bin/ticketctl" dev up --nodes 3 --dir "$work/tl" "${tl_args[@]}" >/dev/null
echo "==> load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$PERF" = 1 ]; then
    command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
    # The loadgen's setup (keys, venue, performances) takes a while; start perf once the
    # measured window is near: wait for the loadgen's "==> ticketledger" line.
    (
        while ! grep -q "^==> ticketledger" "$work/loadgen.err" 2>/dev/null; do sleep 0.2; done
        sleep "$WARMUP"
        url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["http"])' "$work/tl/cluster.json")
        key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin_key"])' "$work/tl/cluster.json")
        leader=$(curl -fsS -H "authorization: Bearer $key" "$url/v1/cluster/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
        if [ "${PERF_PID:-leader}" = all ]; then
            pids=$(cat "$work"/tl/*/ticketd.pid | paste -sd,)
        else
            pids=$(cat "$work/tl/$leader/ticketd.pid")
        fi
        cg=()
        [ -n "$PERF_CALLGRAPH" ] && cg=(--call-graph "$PERF_CALLGRAPH")
        echo "==> perf record -F $PERF_FREQ ${cg[*]} -p $pids (leader n$leader) for ${DURATION}s" >&2
        exec perf record -q -F "$PERF_FREQ" -e cpu-clock "${cg[@]}" -p "$pids" -o "$OUT/perf.data" -- sleep "$DURATION"
    ) &
    perf_pid=$!
fi

# shellcheck disable=SC2086
"$bin/loadgen" run --system ticketledger --cluster-dir "$work/tl" --watch-cluster \
    --workload "$WORKLOAD" --clients "$CLIENTS" --duration-secs "$DURATION" --warmup-secs "$WARMUP" \
    --json "$OUT/$WORKLOAD.json" $LOADGEN_ARGS 2> >(tee "$work/loadgen.err" | grep -v '^\[' >&2)
echo "==> load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$PERF" = 1 ]; then
    wait "$perf_pid" || true
    perf_pid=""
    echo "==> hottest shared objects (leader)"
    perf report -i "$OUT/perf.data" --stdio --no-children --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
    echo "==> hottest symbols (leader)"
    perf report -i "$OUT/perf.data" --stdio --no-children --sort sym 2>/dev/null | grep -v '^#' | grep -v '^$' | grep '%' | head -60
fi
echo "==> results in $OUT"
