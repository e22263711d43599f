#!/usr/bin/env bash
# The Kafka-protocol broker for development, tests and the local run: Nisshi 0.8.1, on the address
# and with the storage engine that cluster.toml's [dev_broker] names, installed once into a
# per-user cache (${EMOSTREAM_CACHE:-~/.cache/emostream}) that every clone reuses. The work is
# emostream-dev-broker's (tools/src/bin/dev_broker/: the ports, PostgreSQL, the topics).
#
#   scripts/broker.sh install       # build Nisshi once (~18 min on 2 cores); a no-op once built
#   scripts/broker.sh start [--port P] [--data DIR] [--config cluster.toml] [--storage ENGINE]
#                           [--cert PEM --key PEM]
#   scripts/broker.sh stop  [--data DIR]  # SIGTERM, SIGKILL after 7 s; then stop its PostgreSQL
#   scripts/broker.sh kill  [--data DIR]  # SIGKILL the broker only (crash tests); start resumes
#   scripts/broker.sh path                # print the nisshi binary's path
#
# The tool is EMOSTREAM_BIN_DIR's when that folder has one (up.sh and the tests set it), else
# built (debug; a no-op when fresh) into the clone's target folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${EMOSTREAM_BIN_DIR:-/nonexistent}/emostream-dev-broker
if [[ ! -x $bin ]]; then
  (cd "$root" && cargo build --quiet --locked -p emostream-tools --bin emostream-dev-broker) >&2
  target=${CARGO_TARGET_DIR:-$root/target}
  bin=$([[ $target == /* ]] && echo "$target" || echo "$root/$target")/debug/emostream-dev-broker
fi
exec "$bin" --root "$root" "$@"
