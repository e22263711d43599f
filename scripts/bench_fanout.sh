#!/usr/bin/env bash
# Fan-out benchmark: how many concurrent viewers this machine holds, the memory each idle one costs
# (WebSocket and SSE), and p99 from the main publisher's emit to a viewer having the whole epoch at
# that load, against two bare fan-out floors measured in the same runs. The driver is
# emostream-bench-fanout (tools/src/bin/bench_fanout.rs: the method, step by step);
# docs/benchmarks.md has the results.
#
#   scripts/bench_fanout.sh                          # levels 10000 25000 50000 60000, 5 runs each
#   LEVELS="50000 100000" scripts/bench_fanout.sh    # the levels given
#   LEVELS=2000 RUNS=2 MEASURE_S=6 SSE_VIEWERS=1000 scripts/bench_fanout.sh   # a smoke test of the script
#   KEEP_GOING=1 scripts/bench_fanout.sh             # run every level even after one fails
#   SSE_VIEWERS=0 …                                  # no SSE phase
#   BENCH_LOG=warn,emostream_broadcaster::fanout=debug KEEP_WORK=1 …  # keep the tiers' logs
#   SUBSCRIBERS=6 SWARMS=4 BASE_PORT=19100 RESULTS_DIR=.run/bench …    # the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
printf '\n==> building (release)\n' >&2
cargo build --release --locked -p emostream-broadcaster -p emostream-tools
exec target/release/emostream-bench-fanout
