#!/usr/bin/env bash
# Every test of the project, from a fresh machine: this is the README's test command and
# what CI runs. It installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# The browser test drives Debian's Chromium through ChromeDriver.
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
    step "installing chromium and chromium-driver (browser test)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

step "the core with no std: no-allocator and alloc-only binaries link and run"
bash ci/no-std.sh

step "benchmark smoke run (checks losslessness and order; figures are not compared here)"
cargo run -q --release -p storecast-bench -- --quick

step "workspace tests: unit, conformance suite, stress, hub end to end (HTTP, WebSocket, browser), doctests"
cargo test --workspace

step "loom models of the stores' synchronisation"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p storecast --release --test loom
