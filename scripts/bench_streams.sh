#!/usr/bin/env bash
# What a live stream costs the broadcaster tiers that keep every stream (main and cluster
# publishers), and that they give it back once the streams go idle: resident memory before, live
# and after `stream_idle_s`, per stream, next to the hub's own count of what it holds.
#
#   scripts/bench_streams.sh                          # 10,000 streams of one epoch, then 2,000 with a full ring
#   STREAMS=5000 EPOCHS=10 scripts/bench_streams.sh   # one run of your own
#
# The logic is in tools/src/bin/bench_streams.rs; docs/benchmarks.md#streams says what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> building (release)" >&2
cargo build --release --locked -p emostream-broadcaster -p emostream-tools --bins
run() { target/release/emostream-bench-streams --streams "$1" --epochs "$2" --idle-s "${IDLE_S:-30}"; }
if [[ -n "${STREAMS:-}" ]]; then
    run "$STREAMS" "${EPOCHS:-1}"
else
    run 10000 1   # an idle stream: one epoch's frames
    run 2000 60   # an active stream: a full ring of 60 epochs (2 minutes)
fi
