#!/usr/bin/env bash
# The side-by-side comparison of issue 9 in one invocation: install the peers when missing
# (Debian's etcd-server, postgresql, redis-server), start them on loopback in a temp dir at
# their safest durability (etcd 3 members with its default WAL fsync; PostgreSQL with
# fsync=on and synchronous_commit=on; Redis with appendonly yes and appendfsync always),
# start a 3-node ticketledger dev cluster, run the same workloads against each, print the
# ratio table (ticketledger ÷ peer), write bench/results/peers.json and peers.svg, and stop
# everything it started. Dev profile only (never --release): figures are dev-profile figures.
#
#   scripts/bench-peers.sh                       # the hold workload, 15 s per system
#   WORKLOADS="hold hold-confirm queue read mix" DURATION=10 scripts/bench-peers.sh
#   SYSTEMS="ticketledger redis" scripts/bench-peers.sh   # a subset
#
# Knobs (environment): WORKLOADS, SYSTEMS, DURATION, WARMUP (seconds), TL_CLIENTS,
# ETCD_CLIENTS, PG_CLIENTS, REDIS_CLIENTS, TL_PROTOCOL (grpc-pipeline, the default: every
# client's holds, confirms, joins and hold reads as messages on a few long-lived Ledger.Pipeline streams, as
# the Redis driver multiplexes its clients on its connections; grpc: one unary call each,
# as the etcd driver sends them; or http), LAYOUT (extra loadgen flags), OUT (results dir), BIN_DIR (use these
# binaries instead of building). Every run also reports CPU per completed request of the
# loadgen and of the servers it can watch (each ticketd, each etcd member, redis-server;
# PostgreSQL's per-connection backends are not watched).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

WORKLOADS=${WORKLOADS:-hold}
SYSTEMS=${SYSTEMS:-ticketledger etcd postgres redis}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
TL_CLIENTS=${TL_CLIENTS:-256}
ETCD_CLIENTS=${ETCD_CLIENTS:-256}
PG_CLIENTS=${PG_CLIENTS:-64}
REDIS_CLIENTS=${REDIS_CLIENTS:-64}
TL_PROTOCOL=${TL_PROTOCOL:-grpc-pipeline}
LAYOUT=${LAYOUT:-}
OUT=${OUT:-bench/results}

wants() { [[ " $SYSTEMS " == *" $1 "* ]]; }

install_peers() {
    local missing=()
    wants etcd && ! command -v etcd >/dev/null && missing+=(etcd-server)
    wants redis && ! command -v redis-server >/dev/null && missing+=(redis-server)
    wants postgres && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} (apt)"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
            $sudo apt-get update >/dev/null
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
        }
    fi
}

ensure_build_deps
announce_build
install_peers
if [ -n "${BIN_DIR:-}" ]; then
    bin=$BIN_DIR # prebuilt ticketd, ticketctl and loadgen (dev profile), e.g. a copy kept stable
else
    echo "==> building ticketd, ticketctl and loadgen (dev profile)"
    cargo build --bins -p node -p client -p loadgen
    bin="$CARGO_TARGET_DIR/debug"
fi

work=$(mktemp -d /tmp/bench-peers.XXXXXX)
chmod 755 "$work"
peer_pids=()
pg_data=""
tl_dir=""
cleanup() {
    set +e
    echo "==> stopping what this script started"
    [ -n "$tl_dir" ] && [ -f "$tl_dir/cluster.json" ] && "$bin/ticketctl" dev down --dir "$tl_dir" >/dev/null 2>&1
    [ -n "$pg_data" ] && runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1
    for p in "${peer_pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${peer_pids[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

# Wait (at most $2 seconds) until the command in $3... succeeds.
wait_for() {
    local what=$1 secs=$2
    shift 2
    for _ in $(seq $((secs * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "error: $what did not come up within ${secs}s" >&2
    return 1
}

read -r -a ports <<<"$("$bin/loadgen" free-ports 8)"

etcd_urls=""
etcd_watch=()
redis_watch=()
if wants etcd; then
    echo "==> etcd $(etcd --version | head -1 | awk '{print $3}'): 3 members"
    cluster=""
    for i in 0 1 2; do cluster+="${cluster:+,}m$i=http://127.0.0.1:${ports[$((3 + i))]}"; done
    for i in 0 1 2; do
        c=${ports[$i]} p=${ports[$((3 + i))]}
        etcd --name "m$i" --data-dir "$work/etcd$i" \
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
            --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
            --initial-cluster "$cluster" --initial-cluster-token bench-peers --initial-cluster-state new \
            --logger zap --log-level warn >"$work/etcd$i.log" 2>&1 &
        peer_pids+=($!)
        etcd_watch+=(--watch-pid "$!")
        etcd_urls+="${etcd_urls:+,}http://127.0.0.1:$c"
    done
    for i in 0 1 2; do
        wait_for "etcd member $i" 30 sh -c "curl -fsS http://127.0.0.1:${ports[$i]}/health | grep -q true"
    done
fi

pg_url=""
if wants postgres; then
    pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
    echo "==> PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'): fsync=on synchronous_commit=on"
    pg_data="$work/pg"
    mkdir -p "$pg_data" "$work/pgsock" && chown postgres "$pg_data" "$work/pgsock"
    runuser -u postgres -- "$pg_bin/initdb" -D "$pg_data" -A trust -U postgres >"$work/initdb.log" 2>&1
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -l "$work/pgsock/pg.log" -w -o \
        "-c port=${ports[6]} -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pgsock -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_connections=200 -c shared_buffers=512MB" \
        start >/dev/null
    pg_url="host=127.0.0.1 port=${ports[6]} user=postgres dbname=postgres"
fi

redis_url=""
if wants redis; then
    echo "==> $(redis-server --version | awk '{print $1, $2, $3}'): appendonly yes, appendfsync always"
    mkdir -p "$work/redis"
    redis-server --port "${ports[7]}" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
        --appendfsync always --save "" --daemonize no --protected-mode no >"$work/redis.log" 2>&1 &
    peer_pids+=($!)
    redis_watch+=(--watch-pid "$!")
    wait_for "redis" 30 redis-cli -p "${ports[7]}" ping
    redis_url="redis://127.0.0.1:${ports[7]}"
fi

if wants ticketledger; then
    echo "==> ticketledger: 3-node dev cluster"
    tl_dir="$work/tl"
    "$bin/ticketctl" dev up --nodes 3 --dir "$tl_dir"
fi

res="$work/results"
mkdir -p "$res" "$OUT"
for w in $WORKLOADS; do
    for s in $SYSTEMS; do
        common=(run --system "$s" --workload "$w" --duration-secs "$DURATION" --warmup-secs "$WARMUP"
            --json "$res/$w-$s.json" $LAYOUT)
        case $s in
            ticketledger) "$bin/loadgen" "${common[@]}" --clients "$TL_CLIENTS" --cluster-dir "$tl_dir" --watch-cluster --tl-protocol "$TL_PROTOCOL" ;;
            etcd) "$bin/loadgen" "${common[@]}" --clients "$ETCD_CLIENTS" --etcd "$etcd_urls" "${etcd_watch[@]}" ;;
            postgres) "$bin/loadgen" "${common[@]}" --clients "$PG_CLIENTS" --pg "$pg_url" --pg-connections "$PG_CLIENTS" ;;
            redis) "$bin/loadgen" "${common[@]}" --clients "$REDIS_CLIENTS" --redis "$redis_url" "${redis_watch[@]}" ;;
            *) echo "error: unknown system $s (ticketledger etcd postgres redis)" >&2; exit 2 ;;
        esac
    done
done

echo "==> comparison (written to $OUT/peers.json and $OUT/peers.svg)"
"$bin/loadgen" compare "$res"/*.json --json "$OUT/peers.json" --svg "$OUT/peers.svg"
