#!/usr/bin/env bash
# The main job: build ticketd and ticketctl, start a local 3-node cluster and watch an
# on-sale sell out (`ticketctl demo`; flags: --seats N --buyers N --kill-leader).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
announce_build
cargo build --bins
exec "$CARGO_TARGET_DIR/debug/ticketctl" demo "$@"
