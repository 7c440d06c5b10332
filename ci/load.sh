#!/usr/bin/env bash
# Load benchmark for the hub: starts a release hub on a loopback port, then runs
# ci/load (idle connections and memory, then fan-out throughput and latency). Arguments
# are passed to the load generator (see ci/load/src/main.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build -q --release -p storecast-hub -p storecast-load
log=$(mktemp)
./target/release/storecast-hub --listen 127.0.0.1:0 --max-connections 50000 >"$log" 2>/dev/null &
hub=$!
trap 'kill $hub 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q listening "$log" && break; sleep 0.1; done
address=$(sed -n 's|listening on http://||p' "$log")
./target/release/storecast-load --hub "$address" --hub-pid "$hub" "$@"
