#!/usr/bin/env bash
# Starts and supervises the timely processes of cluster.toml that live on this host; the
# supervisor is Rust (supervisor/, docs/operations.md): it restarts the whole local cluster
# with backoff when a process dies, exits 3 on a fenced process, 4 on one that refused to start
# (its memory is lost or can be) and 78 on a configuration error instead of restarting, and
# stops every process on SIGTERM or Ctrl-C.
#
#   scripts/run_workers.sh -n 4            # processes 0..3 (those whose host is this machine)
#   scripts/run_workers.sh -n 4 -p 2,3     # processes 2 and 3 (this host's share)
#   scripts/run_workers.sh -n 2 -w 2 -c other.toml
set -euo pipefail
# The supervisor runs the emostream-dataflow of the same folder, EMOSTREAM_BIN_DIR if set.
export EMOSTREAM_BIN_DIR=${EMOSTREAM_BIN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
bin=$EMOSTREAM_BIN_DIR/emostream-supervisor
[[ -x $bin ]] || { echo "no $bin: build it first (cargo build --release --bins)" >&2; exit 2; }
exec "$bin" "$@"
