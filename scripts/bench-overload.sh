#!/usr/bin/env bash
# Overload (issue 9): first the sustainable hold rate of a fresh 3-node dev cluster (closed
# loop), then an open loop at MULT times that rate, sampling each ticketd's RSS from /proc
# every second. What it shows: whether memory stays bounded and the cluster answers 429/503
# quickly instead of letting requests time out. The load generator shares the machine's
# cores with the nodes, so it may not manage to send everything that is due: what it did not
# send is counted (`not sent`) and the rate it really offered is printed beside the target.
# Writes $OUT/overload.json and .svg (the open loop) and $OUT/overload-base.json (the
# closed loop that measured the sustainable rate).
#
#   scripts/bench-overload.sh            # 10x the sustainable rate, 15 s
#   MULT=3 DURATION=5 scripts/bench-overload.sh
#   BASE_RATE=5000 scripts/bench-overload.sh     # skip the closed loop: 10 x 5000/s
#
# Knobs: MULT (default 10), BASE_RATE (holds/s; default: measured), BASE_SECS (closed loop
# length, default 6), BASE_CLIENTS (256), DURATION (open loop, s, default 15), PROTOCOL
# (grpc|http, default grpc: the cheapest client per request, so the most load offered),
# LG_INFLIGHT (loadgen's in-flight bound, default 4096), TIMEOUT_MS (loadgen's request
# timeout, default 5000), TICKETD_ARGS (default "--max-inflight=1024": the node's write
# admission bound), LAYOUT (extra loadgen flags), OUT (results dir, default bench/results),
# NAME (result file prefix, default overload), BIN_DIR (prebuilt ticketd/ticketctl/loadgen),
# CLUSTER_CPUS (e.g. 0.5: confine the three ticketd processes together to that many cores with
# a cgroup CPU quota, so that the loadgen, on the rest of the machine, can offer MULT times what
# the confined cluster sustains; needs root and a writable cgroup cpu controller, v1 or v2).
# Dev profile only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
MULT=${MULT:-10}
BASE_SECS=${BASE_SECS:-6}
BASE_CLIENTS=${BASE_CLIENTS:-256}
DURATION=${DURATION:-15}
PROTOCOL=${PROTOCOL:-grpc}
LG_INFLIGHT=${LG_INFLIGHT:-4096}
TIMEOUT_MS=${TIMEOUT_MS:-5000}
TICKETD_ARGS=${TICKETD_ARGS:---max-inflight=1024}
LAYOUT=${LAYOUT:-}
OUT=${OUT:-bench/results}
NAME=${NAME:-overload}
if [ -n "${BIN_DIR:-}" ]; then
    bin=$BIN_DIR
else
    cargo build --bins -p node -p client -p loadgen
    bin="$CARGO_TARGET_DIR/debug"
fi
work=$(mktemp -d /tmp/bench-overload.XXXXXX)
cgroup=""
cleanup() {
    "$bin/ticketctl" dev down --dir "$work/tl" >/dev/null 2>&1 || true
    if [ -n "$cgroup" ]; then rmdir "$cgroup" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
# A CPU quota for the cluster's processes together: a 10 ms period, so a throttled node
# stalls for at most ~10 ms (well under the election timeout), not a whole 100 ms period.
confine() {
    local cpus=$1 period=10000 quota
    quota=$(python3 -c 'import sys; print(max(1000, int(float(sys.argv[1]) * 10000)))' "$cpus")
    if [ "$(id -u)" != 0 ]; then
        echo "CLUSTER_CPUS needs root (a cgroup CPU quota): not confining" >&2
        return 1
    fi
    if [ -w /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
        cgroup=/sys/fs/cgroup/cpu/ticketledger-overload-$$
        mkdir "$cgroup"
        echo "$period" >"$cgroup/cpu.cfs_period_us"
        echo "$quota" >"$cgroup/cpu.cfs_quota_us"
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        cgroup=/sys/fs/cgroup/ticketledger-overload-$$
        echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
        mkdir "$cgroup"
        echo "$quota $period" >"$cgroup/cpu.max"
    else
        echo "CLUSTER_CPUS: no writable cgroup cpu controller here: not confining" >&2
        return 1
    fi
    local id pid
    for id in 1 2 3; do
        pid=$(cat "$work/tl/$id/ticketd.pid")
        echo "$pid" >"$cgroup/cgroup.procs"
    done
    echo "==> the three ticketd processes share $cpus cores (cgroup $cgroup, quota ${quota} us per ${period} us)"
}
tl_args=()
for a in $TICKETD_ARGS; do tl_args+=("--ticketd-arg=$a"); done
"$bin/ticketctl" dev up --nodes 3 --dir "$work/tl" "${tl_args[@]}" >/dev/null
if [ -n "${CLUSTER_CPUS:-}" ]; then
    confine "$CLUSTER_CPUS" || exit 1
fi
mkdir -p "$OUT"
common=(run --system ticketledger --cluster-dir "$work/tl" --watch-cluster --workload hold
    --tl-protocol "$PROTOCOL" --timeout-ms "$TIMEOUT_MS")

if [ -z "${BASE_RATE:-}" ]; then
    echo "==> sustainable rate: closed loop, $BASE_CLIENTS clients, ${BASE_SECS}s"
    # shellcheck disable=SC2086
    "$bin/loadgen" "${common[@]}" --clients "$BASE_CLIENTS" --duration-secs "$BASE_SECS" \
        --warmup-secs 2 --json "$OUT/$NAME-base.json" $LAYOUT 2> >(grep -v '^\[' >&2)
    BASE_RATE=$(python3 -c 'import json,sys; print(max(1, int(json.load(open(sys.argv[1]))["throughput_per_s"])))' "$OUT/$NAME-base.json")
fi
RATE=$((BASE_RATE * MULT))
echo "==> overload: open loop at ${RATE}/s = ${MULT} x ${BASE_RATE}/s for ${DURATION}s ($PROTOCOL, ticketd $TICKETD_ARGS)"
# shellcheck disable=SC2086
"$bin/loadgen" "${common[@]}" --rate "$RATE" --max-inflight "$LG_INFLIGHT" \
    --duration-secs "$DURATION" --warmup-secs 2 --json "$OUT/$NAME.json" --svg "$OUT/$NAME.svg" $LAYOUT

python3 - "$OUT/$NAME.json" "$BASE_RATE" "$MULT" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
base, mult = int(sys.argv[2]), int(sys.argv[3])
c = r["counts"]
sent = sum(c[k] for k in ("ok", "conflict", "client_error", "rate_limited_429", "unavailable_503",
                          "server_error", "timeout", "transport_error"))
due = sent + c["not_sent"]
secs = max(r["measured_s"], 1e-3)
answered = sent - c["timeout"] - c["transport_error"]
print(f"target {r['target_rate_per_s']}/s = {mult} x {base}/s; sent {sent / secs:.0f}/s "
      f"({100 * sent / max(due, 1):.0f}% of due, {c['not_sent']} not sent by the loadgen)")
print(f"of sent: completed {100 * (c['ok'] + c['conflict']) / max(sent, 1):.1f}%, "
      f"429 {100 * c['rate_limited_429'] / max(sent, 1):.1f}%, 503 {100 * c['unavailable_503'] / max(sent, 1):.1f}%, "
      f"timeouts {100 * c['timeout'] / max(sent, 1):.2f}%, transport errors {100 * c['transport_error'] / max(sent, 1):.2f}%, "
      f"other {100 * (c['client_error'] + c['server_error']) / max(sent, 1):.2f}%")
pb = r["pushed_back_latency"]
print(f"latency: completed p50 {r['latency']['p50_us'] / 1000:.1f} ms p99 {r['latency']['p99_us'] / 1000:.1f} ms; "
      f"429/503 p50 {pb['p50_us'] / 1000:.1f} ms p99 {pb['p99_us'] / 1000:.1f} ms (from when each was due)")
rss = [s.get("rss_kib", []) for s in r["per_second"] if s.get("rss_kib")]
for i, pid in enumerate(r.get("watched_pids", [])):
    series = [s[i] for s in rss if len(s) > i and s[i] > 0]
    if series:
        label = next((u["process"] for u in r.get("cpu", []) if u["pid"] == pid), f"pid {pid}")
        # Growth per second (least squares) and per completed request: memory that follows
        # the work accepted (ledger state) grows per completed request alike at 1x and at 10x;
        # memory that follows the offered load (queues) would grow faster at 10x.
        n = len(series)
        slope = 0.0
        if n > 1:
            mx, my = (n - 1) / 2, sum(series) / n
            slope = sum((x - mx) * (y - my) for x, y in enumerate(series)) / sum((x - mx) ** 2 for x in range(n))
        done = sum(s["completed"] + s["conflict"] for s in r["per_second"]) or 1
        print(f"RSS {label}: first {series[0] // 1024} MiB, max {max(series) // 1024} MiB, last {series[-1] // 1024} MiB "
              f"(second half max {max(series[len(series) // 2:]) // 1024} MiB); "
              f"growth {slope / 1024:.2f} MiB/s, {1024 * (series[-1] - series[0]) / done:.0f} bytes per completed request")
for u in r.get("cpu", []):
    print(f"CPU {u['process']}: {u['cores']:.2f} cores")
EOF
