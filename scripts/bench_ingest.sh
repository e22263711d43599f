#!/usr/bin/env bash
# Ingest benchmark: single taps (POST /send_emoji from 1,000 wrk connections) against nginx
# `return 200`, the gateway's bare HTTP stack and the gateway in both ack modes, each row a ratio
# to nginx with its CPU-µs per request decomposed; then 10,000-emoji batches landed in Kafka
# against a bare produce to the same broker. The driver is emostream-bench-ingest
# (tools/src/bin/bench_ingest.rs: the method); docs/benchmarks.md has the results.
#
#   scripts/bench_ingest.sh            # DURATION=10s CONNECTIONS=1000 BATCH_CONNECTIONS=16 THREADS=2
#   STORAGE=memory scripts/bench_ingest.sh   # another storage engine (postgres, sqlite, memory)
#   PROFILE=1 scripts/bench_ingest.sh  # also: a perf profile of the server in each phase
#   SYSCALLS=1 scripts/bench_ingest.sh # also: the server's system calls per request (perf stat)
#   DURATION=2s CONNECTIONS=100 BATCH_CONNECTIONS=2 STORAGE=memory scripts/bench_ingest.sh  # a smoke test
#   RESULTS_DIR=.run/bench …           # where ingest.txt (for scripts/capacity.py) goes
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
if ((${#missing[@]})); then
  sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
printf '\n==> building (release)\n' >&2
cargo build --release --locked -p emostream-gateway --bin emostream-gateway \
  --example bare_http --example count_events --example produce_batches >&2
cargo build --release --locked -p emostream-tools --bin emostream-bench-ingest --bin emostream-dev-broker >&2
exec target/release/emostream-bench-ingest "$@"
