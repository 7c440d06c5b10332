#!/usr/bin/env bash
# Every test of the project, from a fresh machine: this is the README's test command and
# what CI runs. It installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "the core with no std: no-allocator and alloc-only binaries link and run"
bash ci/no-std.sh

step "benchmark smoke run (checks losslessness and order; figures are not compared here)"
cargo run -q --release -p storecast-bench -- --quick

step "workspace tests: unit, conformance suite, multi-threaded stress, examples, doctests"
cargo test --workspace

step "loom models of the stores' synchronisation"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p storecast --release --test loom
