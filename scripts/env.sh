# Sourced by the scripts: one target directory outside the clone and one build profile for
# everything (tests, demo, CI), so a fresh machine compiles RocksDB once (BUILD-NOTES.md).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ticketledger/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-auto}

# Install what the build needs when it is missing: libclang (RocksDB's bindings are generated
# with bindgen). protoc is vendored through a build dependency, so it needs nothing here.
ensure_build_deps() {
    if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/clang/*/include/stdbool.h >/dev/null 2>&1; then
        echo "==> installing libclang-dev (needed to build RocksDB's bindings)"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get install -y libclang-dev >/dev/null 2>&1 || {
            $sudo apt-get update >/dev/null && $sudo apt-get install -y libclang-dev
        }
    fi
    command -v cargo >/dev/null || { echo "cargo is not installed: install Rust from https://rustup.rs" >&2; exit 1; }
}

# Say so before a build that may take long, so a cold build does not look stuck.
announce_build() {
    if [ ! -d "$CARGO_TARGET_DIR/debug/build" ] || ! ls "$CARGO_TARGET_DIR"/debug/build/librocksdb-sys-*/out >/dev/null 2>&1; then
        echo "==> first build in $CARGO_TARGET_DIR: compiling RocksDB and the dependency tree takes"
        echo "    12-30 minutes on 2 cores (later builds take seconds). Progress follows."
    fi
}
