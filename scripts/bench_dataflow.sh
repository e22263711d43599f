#!/usr/bin/env bash
# The dataflow benchmark: preloads emoji-events on a fresh development broker, then times
# a bare rdkafka consume of the topic against the dataflow with 1 and 2 processes catching up to
# the last epoch, and measures epoch end -> publication under a steady load.
#
#   scripts/bench_dataflow.sh                    # 20,000,000 taps (several minutes on 2 cores)
#   scripts/bench_dataflow.sh --events 2000000   # a quick run
#   scripts/bench_dataflow.sh --help             # every option (span, streams, partitions, ...)
#   STORAGE=memory scripts/bench_dataflow.sh     # the broker's storage engine: postgres (default),
#                                                # sqlite or memory; the report names it
#
# Options go to dataflow/benches/throughput/main.rs, whose header explains each number it prints.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "broker: Nisshi 0.8.1 (built once per machine, then reused)"
scripts/broker.sh install

step "building the release binaries the benchmark runs"
cargo build --release --locked --workspace --bins

if [[ -n ${STORAGE:-} ]]; then export EMOSTREAM_DEV_BROKER__STORAGE=$STORAGE; fi

step "running the benchmark"
# The bench starts target/release/emostream-dataflow through scripts/run_workers.sh.
EMOSTREAM_BIN_DIR="$PWD/target/release" \
  exec cargo bench --locked -p emostream-dataflow --bench throughput -- "$@"
