#!/bin/sh
# The one-shot bootstrap of a compose cluster (busybox sh, inside the ticketledger image):
# `ticketctl cluster init` on the first node, then every other node joins as a learner and is
# promoted to voter. Safe to run again (compose restarts it on every `up`): it initializes
# only a cluster that does not exist anywhere yet, and only adds members that are missing.
#
# Environment: TICKETLEDGER_ADMIN_KEY (16+ characters, becomes the bootstrap operator key),
# TL_NODES="1=node1 2=node2 3=node3" (id=host; HTTP on :8080, gRPC on :9090), the first one
# is initialized. TL_WAIT_SECS (default 120) bounds every wait.
set -eu
: "${TICKETLEDGER_ADMIN_KEY:?set TICKETLEDGER_ADMIN_KEY}"
: "${TL_NODES:?set TL_NODES, e.g. 1=node1 2=node2 3=node3}"
wait_secs=${TL_WAIT_SECS:-120}

log() { echo "bootstrap: $*"; }
deadline=$(( $(date +%s) + wait_secs ))
past_deadline() { [ "$(date +%s)" -ge "$deadline" ]; }

urls=""
for n in $TL_NODES; do urls="${urls:+$urls,}http://${n#*=}:8080"; done
first=${TL_NODES%% *}
first_id=${first%%=*}
first_host=${first#*=}

# 1. Every node's process answers (/healthz); the data volumes are mounted.
for n in $TL_NODES; do
    until ticketctl --timeout-secs 2 health --live --url "http://${n#*=}:8080" >/dev/null 2>&1; do
        past_deadline && { log "node ${n%%=*} (${n#*=}) did not come up within ${wait_secs}s"; exit 1; }
        sleep 1
    done
done
log "all nodes alive: $urls"

export TICKETLEDGER_URL="$urls" TICKETLEDGER_KEY="$TICKETLEDGER_ADMIN_KEY"

# 2. Initialize, unless a cluster exists. A node with the key that answers `cluster status`
# belongs to an initialized cluster: then the first node must not start another one (it may
# have lost its disk: RUNBOOK.md, "A node that lost its disk").
existing=""
for n in $TL_NODES; do
    if ticketctl --timeout-secs 3 --url "http://${n#*=}:8080" cluster status >/dev/null 2>&1; then
        existing="$existing ${n%%=*}"
    fi
done
if [ -z "$existing" ]; then
    log "initializing the cluster on node $first_id ($first_host)"
    ticketctl --url "http://$first_host:8080" cluster init --admin-key "$TICKETLEDGER_ADMIN_KEY"
else
    log "cluster already initialized (nodes answering with the key:$existing)"
fi

# The first line of `cluster status`: "leader: 1   voters: [1, 2]   learners: [3]".
members() { # $1 = voters|learners
    ticketctl --timeout-secs 10 cluster status | sed -n "1s/.*$1: \[\([^]]*\)\].*/\1/p" | tr -d ' '
}
contains() { case ",$1," in *",$2,"*) return 0;; esac; return 1; }

# 3. Join the others: learner (returns once caught up), then voter.
for n in $TL_NODES; do
    id=${n%%=*}; host=${n#*=}
    until voters=$(members voters) && [ -n "$voters" ]; do
        past_deadline && { log "no leader answered cluster status within ${wait_secs}s"; exit 1; }
        sleep 1
    done
    contains "$voters" "$id" && continue
    if ! contains "$(members learners)" "$id"; then
        log "adding node $id ($host) as a learner"
        ticketctl --timeout-secs 60 cluster add-learner --id "$id" --grpc-addr "$host:9090" --http-addr "$host:8080" >/dev/null
    fi
    log "promoting node $id to voter"
    ticketctl --timeout-secs 60 cluster promote --id "$id" >/dev/null
done
ticketctl cluster status
log "done: voters [$(members voters)]"
