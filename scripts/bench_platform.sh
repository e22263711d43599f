#!/usr/bin/env bash
# Many live streams at once through the whole local system (broker, gateway behind a trusted
# proxy address, timely cluster, main publisher → 3 clusters × 3 subscribers): 10,000 streams
# tapped every epoch with a viewer each placed by /register, plus one stream with 10,000 viewers.
# Checks every viewer's frames against the taps the gateway acknowledged, prints end → read and
# each tier's memory before, live and after the idle time.
#
#   scripts/bench_platform.sh                          # 10,000 + 1 streams, 20,000 viewers
#   STREAMS=500 CROWD=500 SECONDS_OF_TAPS=10 scripts/bench_platform.sh   # a small check
#
# The logic is in e2e/src/bin/bench_platform.rs; docs/benchmarks.md#platform says what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each viewer is a descriptor in a subscriber and one in a swarm.
ulimit -Hn "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
echo "==> building (release)" >&2
cargo build --release --locked -p emostream-gateway -p emostream-dataflow -p emostream-supervisor \
    -p emostream-broadcaster -p emostream-protocol -p emostream-tools -p emostream-e2e --bins
scripts/broker.sh install
exec target/release/emostream-bench-platform --streams "${STREAMS:-10000}" --crowd "${CROWD:-10000}" \
    --seconds "${SECONDS_OF_TAPS:-20}" --idle-s "${IDLE_S:-30}" --results "${RESULTS_DIR:-$PWD/.run/bench}"
