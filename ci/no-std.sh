#!/usr/bin/env bash
# Proves that the core needs neither std nor an allocator: builds, inspects and runs two
# real #![no_std] #![no_main] binaries on the host (the only target installed).
#
#   examples/no-std     fixed-capacity stores in statics; no std, no allocator
#   ci/no-std-alloc     heap-backed stores; a bump allocator, no std
#
# Fails if either one's dependency graph enables std (or, for the first, alloc), if a
# binary contains Rust std (or allocator) code, or if it does not run to exit code 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="$PWD/target/no-std"

fail() { echo "no-std check FAILED: $*" >&2; exit 1; }

# check DIR BINARY FORBIDDEN_FEATURES FORBIDDEN_SYMBOLS
check() {
    local dir=$1 bin=$2 features=$3 symbols=$4
    echo "-- $dir"
    cargo build -q --release --manifest-path "$dir/Cargo.toml"
    local tree
    tree=$(cargo tree -q --manifest-path "$dir/Cargo.toml" -e normal,features --prefix none)
    if grep -E "$features" <<<"$tree"; then
        fail "$dir enables a forbidden feature (above)"
    fi
    local exe="$CARGO_TARGET_DIR/release/$bin"
    if nm "$exe" | grep -E "$symbols" | head -5; then
        fail "$exe contains forbidden code (symbols above)"
    fi
    "$exe" || fail "$exe exited with $? (the number of the check that failed)"
    echo "   links, contains no forbidden code, runs: ok"
}

check examples/no-std storecast-no-std-example \
    'feature "(std|alloc)"|event-listener|async-channel' \
    '_ZN3std|_ZN5alloc|__rust_alloc|__rdl_alloc|__rg_alloc'
check ci/no-std-alloc storecast-no-std-alloc-check \
    'feature "std"' \
    '_ZN3std'
