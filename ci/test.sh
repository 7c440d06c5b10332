#!/usr/bin/env bash
# Every test of the project, from a fresh machine: this is the README's test command and
# what CI runs. It installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "core builds without std (alloc only) and with no features"
cargo build -q -p storecast --no-default-features --features alloc
cargo build -q -p storecast --no-default-features

step "benchmark smoke run (checks losslessness and order; figures are not compared here)"
cargo run -q --release -p storecast-bench -- --quick

step "workspace tests: unit, conformance suite, multi-threaded stress, examples, doctests"
cargo test --workspace

step "loom models of the stores' synchronisation"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p storecast --release --test loom
