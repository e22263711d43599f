#!/usr/bin/env bash
# End-to-end benchmark: tap sent → the epoch holding it read by a viewer, through the whole local
# system (broker, gateway, 2-process timely cluster, main publisher → cluster publishers →
# subscribers, WebSocket viewers), p50/p99/max over every (tap, viewer) pair, with its three legs
# and an exact check of the counts viewers saw against the taps the gateway acknowledged.
#
#   scripts/bench_e2e.sh                              # 10,000 viewers, 2,000 single taps/s for 30 s
#   VIEWERS=300 MEASURE_S=10 scripts/bench_e2e.sh     # a small check
#   RATE=5000 BATCH=10 STREAM=bench …                 # other load; see emostream-bench-e2e --help
#
# The system runs on free ports of its own (beside a running up.sh), with cluster.toml's epochs and
# topology, and stops (broker's PostgreSQL included) at the end, on failure and on Ctrl-C. The logic
# is in e2e/src/bin/bench_e2e/; docs/benchmarks.md says what is measured, from where to where.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each viewer is a descriptor in a subscriber and one in a swarm: as many as this shell may have
# (the tool spreads viewers over more swarm processes when the limit is low).
ulimit -Hn "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

echo "==> building (release)" >&2
cargo build --release --locked -p emostream-gateway -p emostream-dataflow -p emostream-supervisor -p emostream-broadcaster \
    -p emostream-protocol -p emostream-tools -p emostream-e2e --bins
scripts/broker.sh install

exec target/release/emostream-bench-e2e --viewers "${VIEWERS:-10000}" --rate "${RATE:-2000}" \
    --batch "${BATCH:-1}" --seconds "${MEASURE_S:-30}" --warmup-seconds "${WARMUP_S:-3}" \
    --stream "${STREAM:-main}" --swarms "${SWARMS:-4}" --results "${RESULTS_DIR:-$PWD/.run/bench}"
