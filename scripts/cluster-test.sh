#!/usr/bin/env bash
# Every procedure of cluster/RUNBOOK.md, run against real containers on this machine's Docker
# engine: build the images, start the compose cluster, book seats through the client while
# nodes are restarted, upgraded, disconnected, replaced and moved around, back up, restore
# into a new cluster, and check that no acknowledged booking was lost and that every replica's
# state hash agrees. Each step is timed; the table at the end is the report.
#
#   scripts/cluster-test.sh           # every step (about 10 minutes on 2 cores, warm build)
#   scripts/cluster-test.sh --short   # CI: no upgrade, add/remove, lost disk, lost quorum,
#                                     # 5-node start (the 5-node file is still validated)
#   NO_CARGO_BUILD=1 ...              # take the binaries as they are in $CARGO_TARGET_DIR
#
# Skips (exit 0, with the reason) where no Docker engine answers. Containers publish their
# ports on 127.0.0.1 only. Everything the script creates (projects, containers, networks,
# volumes, the upgrade tag, the work directory) is removed at exit; KEEP=1 keeps the work
# directory (logs, acked bookings, backup) for a post-mortem.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=full
case "${1:-}" in
    "") ;;
    --short) mode=short ;;
    *) echo "usage: $0 [--short]" >&2; exit 2 ;;
esac

skip() { echo "cluster-test: SKIP: $*"; exit 0; }
command -v docker >/dev/null || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine answers (docker info failed; is dockerd running?)"
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    echo "==> installing docker-compose (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose >/dev/null 2>&1 ||
        skip "neither 'docker compose' nor 'docker-compose' is available and apt could not install it"
    compose_cmd=(docker-compose)
fi
command -v python3 >/dev/null || { echo "python3 is needed (JSON and free ports)" >&2; exit 1; }

source scripts/env.sh
bin="$CARGO_TARGET_DIR/debug"
work=$(mktemp -d /tmp/cluster-test.XXXXXX)
run_id=tlct$$
main=${run_id}m
restored=${run_id}r
five=${run_id}f
projects=()
workload_pid=""
upgrade_tag="ticketledger:${run_id}-next"
admin_key=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
export TICKETLEDGER_ADMIN_KEY=$admin_key
export TICKETLEDGER_IMAGE=ticketledger:dev TICKETLEDGER_PROMETHEUS_IMAGE=ticketledger-prometheus:dev
cfile3=cluster/compose/docker-compose.yml
cfile5=cluster/compose/docker-compose.5.yml

# ------------------------------------------------------------------ timing and reporting
t0=$(date +%s.%N)
step_name=""
step_t=""
steps_file="$work/steps.txt"
: >"$steps_file"
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }
step() {
    end_step
    step_name=$1
    step_t=$(date +%s.%N)
    echo
    echo "==> [$(elapsed "$t0")s] step $step_name: $2"
}
end_step() {
    if [ -n "$step_name" ]; then
        local s; s=$(elapsed "$step_t")
        printf '%-18s %7ss\n' "$step_name" "$s" >>"$steps_file"
        echo "    step $step_name took ${s}s"
        step_name=""
    fi
}
note() { echo "    $*"; }
fail() {
    echo "cluster-test: FAIL in step ${step_name:-setup}: $*" >&2
    exit 1
}

# ------------------------------------------------------------------ cleanup
cleanup() {
    local rc=$?
    set +e
    if [ -n "$workload_pid" ] && kill -0 "$workload_pid" 2>/dev/null; then
        kill "$workload_pid"; wait "$workload_pid" 2>/dev/null
    fi
    for p in "${projects[@]}"; do
        if [ "$rc" -ne 0 ]; then
            compose "$p" logs --no-color --tail 200 >"$work/$p.log" 2>&1
        fi
        compose "$p" --profile spare down -v --remove-orphans -t 5 >/dev/null 2>&1 ||
            compose "$p" down -v --remove-orphans -t 5 >/dev/null 2>&1
    done
    docker image rm "$upgrade_tag" >/dev/null 2>&1
    if [ "$rc" -ne 0 ] || [ "${KEEP:-0}" = 1 ]; then
        echo "cluster-test: work directory kept: $work (container logs: $work/*.log)"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# compose PROJECT [args...]: the project's compose file is chosen by its name.
compose() {
    local p=$1; shift
    local f=$cfile3
    [ "$p" = "$five" ] && f=$cfile5
    local envf="$work/$p.env"
    "${compose_cmd[@]}" --env-file "$envf" -p "$p" -f "$f" "$@"
}

free_ports() { # N: N free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# new_project NAME NODES: ports and an env file for it; sets <NAME>_urls.
declare -A urls prom_port
new_project() {
    local p=$1 n=$2 ports
    read -r -a ports <<<"$(free_ports $((n + 2)))"
    local envf="$work/$p.env" u=""
    : >"$envf"
    for i in $(seq 1 $((n + 1))); do
        echo "TL_PORT_$i=${ports[$((i - 1))]}" >>"$envf"
        [ "$i" -le "$n" ] && u="${u:+$u,}http://127.0.0.1:${ports[$((i - 1))]}"
    done
    echo "TL_PROMETHEUS_PORT=${ports[$((n + 1))]}" >>"$envf"
    urls[$p]=$u
    prom_port[$p]=${ports[$((n + 1))]}
    projects+=("$p")
}
port_of() { sed -n "s/^TL_PORT_$2=//p" "$work/$1.env"; }

declare -A keys # each project's operator key
ctl_in() { # PROJECT ticketctl-args...: ticketctl against that cluster with its operator key
    local p=$1; shift
    "$bin/ticketctl" --url "${urls[$p]}" --key "${keys[$p]}" "$@"
}
js() { # PYTHON-EXPR over the JSON on stdin, as `d`
    python3 -c 'import json, sys; d = json.load(sys.stdin); r = eval(sys.argv[1]); print(" ".join(map(str, r)) if isinstance(r, (list, tuple)) else r)' "$1"
}
status_json() { ctl_in "$1" --json --timeout-secs 10 cluster status 2>/dev/null; }
leader_of() { status_json "$1" | js 'd.get("leader") if d.get("leader") is not None else ""' || true; }
voters_of() { status_json "$1" | js 'sorted(d["voters"])' || true; }
container() { compose "$1" ps -q "$2"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.5 s until COMMAND succeeds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local start; start=$(date +%s.%N)
    local deadline=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.5
    done
    note "$what ($(elapsed "$start")s)"
}
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container "$1" "$2")")" = healthy ]; }
# Every node of the project is a voter-or-learner that answers, and they agree on one leader.
all_members_answer() {
    status_json "$1" | js 'all(n["role"] in ("leader", "follower", "learner") for n in d["nodes"]) and d.get("leader") is not None and len(d["nodes"]) == len(d["voters"]) + len(d["learners"])' | grep -qx True
}
# Wait until node ID has applied what the leader had applied at the start of the wait.
wait_caught_up() {
    local p=$1 id=$2 target=""
    local deadline=$(( $(date +%s) + 30 ))
    # The answering node may not know a leader for a moment (it just came back).
    until target=$(status_json "$p" | js "next(n['applied_index'] for n in d['nodes'] if n['id'] == d.get('leader'))" 2>/dev/null); do
        [ "$(date +%s)" -lt "$deadline" ] || fail "no leader to catch up with"
        sleep 0.5
    done
    wait_for 90 "node $id applied index $target (the leader's)" node_applied_at_least "$p" "$id" "$target"
}
node_applied_at_least() {
    status_json "$1" | js "any(n['id'] == $2 and n['role'] in ('leader', 'follower', 'learner') and n['applied_index'] >= $3 for n in d['nodes'])" | grep -qx True
}
# hashes_agree PROJECT: one status where every node reports the same applied index and hash.
hashes_agree() {
    status_json "$1" | js 'len({(n["applied_index"], n["state_hash"]) for n in d["nodes"]}) == 1 and all(n["state_hash"] for n in d["nodes"])' | grep -qx True
}
show_hashes() {
    status_json "$1" | js '"; ".join("node %s applied=%s hash=%s" % (n["id"], n["applied_index"], n["state_hash"][:16]) for n in d["nodes"])'
}
acked_count() { [ -f "$work/acked.log" ] && wc -l <"$work/acked.log" || echo 0; }
acked_at_least() { [ "$(acked_count)" -ge "$1" ]; }
# Bookings keep being acknowledged: N more than now, within SECONDS.
expect_progress() {
    local n=$1 secs=$2 now; now=$(acked_count)
    wait_for "$secs" "workload progressed: $((now + n))+ bookings acknowledged" acked_at_least $((now + n))
}
# transfer_away PROJECT ID: if ID leads, move leadership to another voter first (RUNBOOK:
# leader transfer before maintenance).
transfer_away() {
    local p=$1 id=$2 l to
    l=$(leader_of "$p")
    [ "$l" = "$id" ] || return 0
    to=$(voters_of "$p" | tr ' ' '\n' | grep -vx "$id" | head -1)
    ctl_in "$p" cluster transfer-leader --to "$to" >/dev/null
    wait_for 30 "leadership moved from node $id to node $to" leader_is "$p" "$to"
}
leader_is() { [ "$(leader_of "$1")" = "$2" ]; }
leader_is_not() { local l; l=$(leader_of "$1"); [ -n "$l" ] && [ "$l" != "$2" ]; }
voters_are() { [ "$(voters_of "$1")" = "$2" ]; }
bootstrap_done() { # PROJECT: the bootstrap one-shot exited 0
    local c; c=$(container "$1" bootstrap) && [ -n "$c" ] &&
        [ "$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$c")" = "exited 0" ]
}
bootstrap_failed() {
    local c; c=$(container "$1" bootstrap) && [ -n "$c" ] &&
        docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$c" | grep -q '^exited [1-9]'
}
start_cluster() { # PROJECT NODES
    local p=$1 n=$2
    keys[$p]=$TICKETLEDGER_ADMIN_KEY
    compose "$p" up -d --quiet-pull >"$work/$p-up.log" 2>&1 || { cat "$work/$p-up.log"; fail "compose up failed"; }
    local deadline=$(( $(date +%s) + 180 ))
    until bootstrap_done "$p"; do
        if bootstrap_failed "$p" || [ "$(date +%s)" -ge "$deadline" ]; then
            compose "$p" logs --no-color bootstrap | tail -20
            fail "the bootstrap of $p did not finish"
        fi
        sleep 0.5
    done
    note "bootstrap: $(compose "$p" logs --no-color bootstrap | grep -o 'bootstrap: done.*')"
    local want; want=$(seq -s ' ' 1 "$n")
    wait_for 60 "voters are [$want]" voters_are "$p" "$want"
    for i in $(seq 1 "$n"); do wait_for 60 "node$i healthy (docker health check: ticketctl health)" healthy "$p" "node$i"; done
}

# ================================================================== the steps
echo "cluster-test ($mode): work directory $work, compose: ${compose_cmd[*]}"

step build "the dev-profile binaries and the workload driver (never --release)"
if [ "${NO_CARGO_BUILD:-0}" = 1 ]; then
    note "NO_CARGO_BUILD=1: using the binaries already in $bin"
else
    ensure_build_deps
    cargo build -q -p node -p client --bins --example cluster_workload
fi
# Private copies: another build in the shared target directory cannot swap them mid-run.
mkdir -p "$work/bin"
cp "$bin/ticketd" "$bin/ticketctl" "$bin/examples/cluster_workload" "$work/bin/" || fail "the binaries were not built"
bin="$work/bin"
workload="$bin/cluster_workload"

step image "cluster/image/build.sh: both images FROM scratch, no registry"
NO_CARGO_BUILD=1 TICKETLEDGER_BIN_DIR="$bin" cluster/image/build.sh
[ "$(docker image inspect -f '{{.Config.User}}' ticketledger:dev)" = "10001:10001" ] || fail "the node image does not run as the non-root user"
docker image inspect -f '{{json .Config.Healthcheck.Test}}' ticketledger:dev | grep -q 'health' || fail "the node image has no health check"
probe=$(docker create ticketledger:dev)
docker export "$probe" | tar -t >"$work/image-files.txt"
docker rm "$probe" >/dev/null
note "node image: $(wc -l <"$work/image-files.txt") files; shared libraries: $(grep -E '^(usr/)?lib' "$work/image-files.txt" | grep -E '\.so' | sed 's,.*/,,' | sort | tr '\n' ' ')"
for l in $(ldd "$bin/ticketd" "$bin/ticketctl" | awk '/=> \// { print $3 }' | sort -u); do
    grep -qx "${l#/}" "$work/image-files.txt" || fail "the image lacks $l, which ldd lists"
done

step static "promtool, compose config (3 and 5 nodes), Kubernetes schemas, dashboard JSON"
(cd cluster/prometheus && promtool check config prometheus.yml >/dev/null && promtool check config prometheus-5.yml >/dev/null &&
    promtool check rules alerts.yml >/dev/null && promtool test rules alerts_test.yml >/dev/null) || fail "promtool rejected the Prometheus files"
note "promtool: check config (3 and 5 nodes), check rules, test rules: ok"
new_project "$main" 3
new_project "$restored" 3
[ "$mode" = full ] && new_project "$five" 5
compose "$main" config -q || fail "docker-compose.yml is invalid"
"${compose_cmd[@]}" --env-file "$work/$main.env" -f "$cfile5" config -q || fail "docker-compose.5.yml is invalid"
note "compose config: docker-compose.yml and docker-compose.5.yml valid"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/ticketledger/k8s-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    note "installing kubernetes-validate (PyPI) into $venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate >/dev/null || fail "could not install kubernetes-validate"
fi
"$venv/bin/kubernetes-validate" --strict --quiet cluster/k8s/services.yaml cluster/k8s/statefulset.yaml cluster/k8s/pdb.yaml ||
    fail "the Kubernetes manifests do not validate"
# The validator must be able to fail: a misspelt field is caught.
sed 's/containerPort:/containerPorts:/' cluster/k8s/statefulset.yaml >"$work/broken-statefulset.yaml"
if "$venv/bin/kubernetes-validate" --strict --quiet "$work/broken-statefulset.yaml" >/dev/null 2>&1; then
    fail "kubernetes-validate accepted a misspelt field: the k8s check proves nothing"
fi
note "kubernetes-validate --strict: services, statefulset, pdb valid (a misspelt field is rejected); not run on a Kubernetes cluster"
python3 -m json.tool cluster/grafana/ticketledger-dashboard.json >/dev/null || fail "the dashboard is not JSON"

step up "3-node compose cluster, one-shot bootstrap (ticketctl cluster init + join), Prometheus"
start_cluster "$main" 3
compose "$main" ps
# Published ports are on loopback only.
for c in $(compose "$main" ps -q); do
    if docker port "$c" | grep -v -- '-> 127\.0\.0\.1:' | grep -q .; then
        fail "container $c publishes a port beyond 127.0.0.1: $(docker port "$c" | tr '\n' ' ')"
    fi
done
note "published ports: $(for c in $(compose "$main" ps -q); do docker port "$c"; done | sed 's/.*-> //' | tr '\n' ' ')"

step prometheus "Prometheus scrapes every node; dashboard metrics and queries checked live"
prom="http://127.0.0.1:${prom_port[$main]}"
prom_value() { curl -fsS "$prom/api/v1/query" --data-urlencode "query=$1" | js 'd["data"]["result"][0]["value"][1] if d["data"]["result"] else ""'; }
prom_is() { [ "$(prom_value "$1")" = "$2" ]; }
wait_for 60 "Prometheus: 3 ticketledger targets up" prom_is 'sum(up{job="ticketledger"})' 3
wait_for 30 "Prometheus: the node exporter is up" prom_is 'sum(up{job="node-exporter"})' 1
wait_for 30 "Prometheus: exactly one leader" prom_is 'sum(ticketledger_raft_is_leader)' 1
wait_for 30 "Prometheus: free space of the 3 data volumes" prom_is 'count(node_filesystem_avail_bytes{mountpoint=~"/data/.+"})' 3
wait_for 30 "Prometheus: disk flush counters" prom_is 'count(node_disk_flush_requests_total) > bool 0' 1
curl -fsS "http://127.0.0.1:$(port_of "$main" 1)/metrics" >"$work/node-metrics.txt"
curl -fsS "$prom/api/v1/label/__name__/values" | js '"\n".join(d["data"])' >"$work/scraped-names.txt"
cluster/grafana/check_dashboard.py cluster/grafana/ticketledger-dashboard.json \
    --metrics "$work/node-metrics.txt" --metrics "$work/scraped-names.txt" \
    --rules cluster/prometheus/alerts.yml --prometheus "$prom" || fail "the dashboard or the rules refer to something that does not exist"

step workload "the workload: seats held and confirmed through the client, every ack recorded"
seats=60000; [ "$mode" = short ] && seats=20000
"$workload" --url "${urls[$main]}" setup --key "$admin_key" --seats "$seats" --workers 4 --state "$work/workload.json"
"$workload" --url "${urls[$main]}" run --state "$work/workload.json" --acked "$work/acked.log" \
    --stop-file "$work/STOP" >"$work/workload.log" 2>&1 &
workload_pid=$!
wait_for 60 "first 50 bookings acknowledged" acked_at_least 50

step rolling-restart "restart every node in turn (leader moved away first) under the workload"
for i in 1 2 3; do
    transfer_away "$main" "$i"
    docker restart -t 30 "$(container "$main" "node$i")" >/dev/null
    wait_for 60 "node$i healthy after restart" healthy "$main" "node$i"
    wait_caught_up "$main" "$i"
done
expect_progress 20 60

if [ "$mode" = full ]; then
    step rolling-upgrade "recreate every node from a new image tag on its volume, one at a time"
    docker tag ticketledger:dev "$upgrade_tag"
    for i in 1 2 3; do
        transfer_away "$main" "$i"
        TICKETLEDGER_IMAGE=$upgrade_tag compose "$main" up -d --no-deps "node$i" >>"$work/$main-up.log" 2>&1
        [ "$(docker inspect -f '{{.Config.Image}}' "$(container "$main" "node$i")")" = "$upgrade_tag" ] || fail "node$i was not recreated from $upgrade_tag"
        wait_for 60 "node$i healthy on $upgrade_tag" healthy "$main" "node$i"
        wait_caught_up "$main" "$i"
    done
    export TICKETLEDGER_IMAGE=$upgrade_tag
    expect_progress 20 60
fi

step partition "disconnect the leader's network, a new leader takes over; reconnect, it catches up"
old=$(leader_of "$main")
[ -n "$old" ] || fail "no leader before the partition"
net="${main}_ledger"
docker network disconnect "$net" "$(container "$main" "node$old")"
wait_for 30 "a new leader other than node $old" leader_is_not "$main" "$old"
expect_progress 20 60
docker network connect --alias "node$old" "$net" "$(container "$main" "node$old")"
wait_for 60 "node$old healthy after reconnect" healthy "$main" "node$old"
wait_caught_up "$main" "$old"
wait_for 30 "every member answers with one leader" all_members_answer "$main"

step transfer-leader "ticketctl cluster transfer-leader to a follower"
l=$(leader_of "$main")
to=$(voters_of "$main" | tr ' ' '\n' | grep -vx "$l" | tail -1)
t_transfer=$(date +%s.%N)
ctl_in "$main" cluster transfer-leader --to "$to" >/dev/null
note "ticketctl cluster transfer-leader --to $to returned after $(elapsed "$t_transfer")s"
wait_for 30 "node $to leads" leader_is "$main" "$to"
expect_progress 10 60

if [ "$mode" = full ]; then
    step add-remove "add node4 as a learner, promote it, then remove it again"
    compose "$main" --profile spare up -d --no-deps node4 >>"$work/$main-up.log" 2>&1
    wait_for 60 "node4 alive" "$bin/ticketctl" --timeout-secs 2 health --live --url "http://127.0.0.1:$(port_of "$main" 4)"
    ctl_in "$main" --timeout-secs 120 cluster add-learner --id 4 --grpc-addr node4:9090 --http-addr node4:8080 >/dev/null
    ctl_in "$main" cluster promote --id 4 >/dev/null
    wait_for 30 "voters are [1 2 3 4]" voters_are "$main" "1 2 3 4"
    wait_caught_up "$main" 4
    transfer_away "$main" 4
    ctl_in "$main" cluster remove --id 4 >/dev/null
    wait_for 30 "voters are [1 2 3] again" voters_are "$main" "1 2 3"
    compose "$main" --profile spare rm -sf node4 >/dev/null 2>&1
    docker volume rm "${main}_node4-data" >/dev/null
    expect_progress 10 60

    step lost-disk "a follower loses its disk: remove it, wipe, start empty, add back"
    l=$(leader_of "$main")
    victim=$(voters_of "$main" | tr ' ' '\n' | grep -vx "$l" | head -1)
    remaining=$(voters_of "$main" | tr ' ' '\n' | grep -vx "$victim" | tr '\n' ' ' | sed 's/ $//')
    # The disk is gone: the node is down. (The node exporter mounts every data volume
    # read-only: it lets go of them meanwhile.)
    compose "$main" rm -sf "node$victim" node-exporter >/dev/null 2>&1
    docker volume rm "${main}_node${victim}-data" >/dev/null
    ctl_in "$main" cluster remove --id "$victim" >/dev/null
    wait_for 30 "node $victim is no longer a member (voters [$remaining])" voters_are "$main" "$remaining"
    compose "$main" up -d --no-deps "node$victim" node-exporter >>"$work/$main-up.log" 2>&1
    wait_for 60 "node$victim alive on an empty volume" "$bin/ticketctl" --timeout-secs 2 health --live --url "http://127.0.0.1:$(port_of "$main" "$victim")"
    ctl_in "$main" --timeout-secs 120 cluster add-learner --id "$victim" --grpc-addr "node$victim:9090" --http-addr "node$victim:8080" >/dev/null
    ctl_in "$main" cluster promote --id "$victim" >/dev/null
    wait_for 30 "voters are [1 2 3]" voters_are "$main" "1 2 3"
    wait_for 60 "node$victim healthy" healthy "$main" "node$victim"
    wait_caught_up "$main" "$victim"
    expect_progress 10 60
fi

step stop-workload "stop the workload and collect what it was told"
touch "$work/STOP"
wait_for 60 "the workload exited" bash -c "! kill -0 $workload_pid"
wait "$workload_pid" || fail "the workload failed: $(tail -3 "$work/workload.log")"
workload_pid=""
grep -E '^\[' "$work/workload.log" | tail -1 | sed 's/^/    /'
tail -1 "$work/workload.log" | sed 's/^/    /'

step verify "every acknowledged booking reads back; every replica's state hash agrees"
"$workload" --url "${urls[$main]}" verify --key "$admin_key" --acked "$work/acked.log" --min 200 || fail "acknowledged bookings were lost"
wait_for 60 "all 3 replicas at one applied index with one state hash" hashes_agree "$main"
note "$(show_hashes "$main")"

if [ "$mode" = full ]; then
    step quorum-loss "stop 2 of 3 nodes: writes refused, nothing acknowledged; bring them back"
    l=$(leader_of "$main")
    others=$(voters_of "$main" | tr ' ' '\n' | grep -vx "$l" | tr '\n' ' ')
    for i in $others; do docker stop -t 30 "$(container "$main" "node$i")" >/dev/null; done
    if "$bin/ticketctl" --url "http://127.0.0.1:$(port_of "$main" "$l")" --key "$admin_key" --timeout-secs 8 \
        event create --name "during quorum loss" --category test >"$work/quorum-write.txt" 2>&1; then
        fail "a write was acknowledged by a cluster without a majority"
    fi
    note "write without a majority refused: $(tail -1 "$work/quorum-write.txt" | cut -c1-120)"
    for i in $others; do docker start "$(container "$main" "node$i")" >/dev/null; done
    for i in $others; do wait_for 90 "node$i healthy again" healthy "$main" "node$i"; done
    "$workload" --url "${urls[$main]}" verify --key "$admin_key" --acked "$work/acked.log" --min 200 || fail "bookings lost after the quorum loss"
    wait_for 60 "replicas agree after the quorum came back" hashes_agree "$main"
fi

step backup "ticketctl cluster backup"
ctl_in "$main" cluster backup --out "$work/backup.snap"
note "backup: $(stat -c %s "$work/backup.snap") bytes"

step restore "a new 3-node cluster, bootstrapped, restored from the backup; bookings read back"
other_key=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
TICKETLEDGER_ADMIN_KEY=$other_key start_cluster "$restored" 3
ctl_in "$restored" cluster restore --from "$work/backup.snap" >/dev/null
keys[$restored]=$admin_key
if "$bin/ticketctl" --url "${urls[$restored]}" --key "$other_key" cluster status >/dev/null 2>&1; then
    fail "the new cluster's bootstrap key still works after the restore"
fi
note "restored: the backup's admin key is valid, the new cluster's bootstrap key no longer is"
# After a restore the backup's own keys are the valid ones: the original admin key works.
"$workload" --url "${urls[$restored]}" verify --key "$admin_key" --acked "$work/acked.log" --min 200 || fail "the restored cluster lacks acknowledged bookings"
wait_for 60 "the restored replicas agree" hashes_agree "$restored"
note "$(show_hashes "$restored")"
compose "$restored" down -v --remove-orphans -t 5 >/dev/null 2>&1

if [ "$mode" = full ]; then
    step five-nodes "the 5-node compose file started: bootstrap, 5 voters, hashes agree"
    start_cluster "$five" 5
    wait_for 60 "5 replicas agree" hashes_agree "$five"
    note "$(show_hashes "$five")"
    compose "$five" down -v --remove-orphans -t 5 >/dev/null 2>&1
fi
end_step

echo
echo "cluster-test ($mode) passed in $(elapsed "$t0")s; $(acked_count) acknowledged bookings, none lost. Step times:"
cat "$steps_file"
