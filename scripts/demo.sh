#!/usr/bin/env bash
# The main job: build ticketctl and run the on-sale demo on a local 3-node cluster.
# Until `ticketctl demo` lands (issue 7) this runs the closest thing that exists: the ledger
# benchmark of a 100k-seat on-sale applied in process.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
announce_build
if [ -f crates/client/Cargo.toml ] && grep -q '"demo"' crates/client/src/bin/ticketctl.rs 2>/dev/null; then
    cargo build --bins
    exec "$CARGO_TARGET_DIR/debug/ticketctl" demo "$@"
fi
echo "==> ticketctl demo is not built yet; running the in-process ledger benchmark instead"
exec cargo bench -p ledger --bench ledger "$@"
