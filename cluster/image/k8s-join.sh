#!/bin/sh
# The join sidecar of a ticketd pod in the Kubernetes StatefulSet (busybox sh). Runs once per
# pod start, then idles:
#  - pod 0 initializes the cluster, but only when no peer answers `cluster status` with the
#    admin key (a fresh cluster); a pod 0 that lost its disk must never start a second cluster;
#  - every pod whose id is not a voter joins: add-learner (returns once caught up), promote.
# A pod the operator removed on purpose (RUNBOOK.md, "Add and remove a node") is re-added only
# when it restarts, so scale down first removes the member, then the replica.
# Environment: TICKETLEDGER_ADMIN_KEY (Secret), TL_HEADLESS, TL_STATEFULSET, TL_REPLICAS,
# POD_NAMESPACE; TL_WAIT_SECS (default 600) bounds the waits.
set -eu
: "${TICKETLEDGER_ADMIN_KEY:?}" "${TL_HEADLESS:?}" "${TL_STATEFULSET:?}" "${TL_REPLICAS:?}" "${POD_NAMESPACE:?}"
wait_secs=${TL_WAIT_SECS:-600}
deadline=$(( $(date +%s) + wait_secs ))
log() { echo "join: $*"; }
ordinal=${HOSTNAME##*-}
id=$((ordinal + 1))
host() { echo "$TL_STATEFULSET-$1.$TL_HEADLESS.$POD_NAMESPACE.svc"; }
me=$(host "$ordinal")

until ticketctl --timeout-secs 2 health --live --url "http://127.0.0.1:8080" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { log "local ticketd not alive after ${wait_secs}s"; exit 1; }
    sleep 2
done

urls=""; i=0
while [ "$i" -lt "$TL_REPLICAS" ]; do urls="${urls:+$urls,}http://$(host "$i"):8080"; i=$((i + 1)); done
export TICKETLEDGER_URL="$urls" TICKETLEDGER_KEY="$TICKETLEDGER_ADMIN_KEY"

initialized() {
    i=0
    while [ "$i" -lt "$TL_REPLICAS" ]; do
        ticketctl --timeout-secs 3 --url "http://$(host "$i"):8080" cluster status >/dev/null 2>&1 && return 0
        i=$((i + 1))
    done
    return 1
}
members() { ticketctl --timeout-secs 10 cluster status | sed -n "1s/.*$1: \[\([^]]*\)\].*/\1/p" | tr -d ' '; }
contains() { case ",$1," in *",$2,"*) return 0;; esac; return 1; }

if [ "$ordinal" = 0 ] && ! initialized; then
    log "no cluster found: initializing on $me"
    ticketctl --url "http://127.0.0.1:8080" cluster init --admin-key "$TICKETLEDGER_ADMIN_KEY"
fi
until voters=$(members voters 2>/dev/null) && [ -n "$voters" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { log "no cluster answered within ${wait_secs}s"; exit 1; }
    sleep 2
done
if ! contains "$voters" "$id"; then
    if ! contains "$(members learners)" "$id"; then
        log "adding node $id ($me) as a learner"
        ticketctl --timeout-secs 300 cluster add-learner --id "$id" --grpc-addr "$me:9090" --http-addr "$me:8080" >/dev/null
    fi
    log "promoting node $id"
    ticketctl --timeout-secs 60 cluster promote --id "$id" >/dev/null
fi
log "node $id is a voter: [$(members voters)]"
# Stay up so the pod is not restarted (a sidecar that exits would be run again).
exec sleep 2147483647
