#!/usr/bin/env bash
# Every test of the project, from a fresh machine: this is the README's test command and
# what CI runs. It installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# The browser test drives Debian's Chromium through ChromeDriver; the Redis tests start
# their own redis-server (and use redis-cli and redis-benchmark) from Debian's packages.
packages=()
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || packages+=(chromium chromium-driver)
{ command -v redis-server && command -v redis-cli && command -v redis-benchmark; } >/dev/null ||
    packages+=(redis-server redis-tools)
if [ ${#packages[@]} -gt 0 ]; then
    step "installing ${packages[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
fi

step "the core with no std: no-allocator and alloc-only binaries link and run"
bash ci/no-std.sh

step "the core on microcontrollers: four targets build; an interrupt feeds static stores in QEMU (Cortex-M3 and M0); size against embassy-sync"
bash ci/embedded.sh

step "benchmark smoke run (checks losslessness and order; figures are not compared here)"
cargo run -q --release -p storecast-bench -- --quick
cargo run -q --release -p storecast-bench --bin redis -- --quick
cargo run -q --release -p storecast-bench --bin cluster -- --quick

step "workspace tests: unit, conformance suite (in memory and on Redis), stress, Redis faults, hub end to end (HTTP, WebSocket, browser, two hubs on Redis), doctests"
# storecast-redis/smol adds the Redis stores' smol and async-std runs to its Tokio ones;
# storecast-redis/tls its tests against a TLS-only redis-server.
cargo test --workspace --features storecast-redis/smol,storecast-redis/tls

step "loom models of the stores' synchronisation"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p storecast --release --test loom
