#!/bin/sh
# Entry point of a ticketd pod in the Kubernetes StatefulSet (busybox sh): the Raft id is the
# pod's ordinal + 1 (ids are positive), the advertised addresses are the pod's stable DNS name
# under the headless service. Environment: TL_HEADLESS (the headless service's name),
# POD_NAMESPACE (downward API).
set -eu
: "${TL_HEADLESS:?set TL_HEADLESS to the headless service name}"
: "${POD_NAMESPACE:?set POD_NAMESPACE from the downward API}"
ordinal=${HOSTNAME##*-}
case "$ordinal" in ''|*[!0-9]*) echo "cannot read an ordinal from HOSTNAME=$HOSTNAME" >&2; exit 1;; esac
fqdn="$HOSTNAME.$TL_HEADLESS.$POD_NAMESPACE.svc"
export TICKETLEDGER_ID=$((ordinal + 1))
export TICKETLEDGER_ADVERTISE_HTTP="$fqdn:8080" TICKETLEDGER_ADVERTISE_GRPC="$fqdn:9090"
exec /usr/local/bin/ticketd "$@"
