#!/usr/bin/env bash
# The Kafka-protocol broker for development, tests and the local run: Tansu 0.6.0 with SQLite
# storage on 127.0.0.1. Installed once into a per-user cache outside the clone, so a fresh clone
# (CI included) reuses it.
#
#   scripts/broker.sh install                                   # build Tansu once (~10 min, 2 cores)
#   scripts/broker.sh start [--port 9092] [--data DIR] [--config cluster.toml]
#                           # start in the background, wait until it answers, create the topics
#   scripts/broker.sh stop  [--data DIR]
#   scripts/broker.sh path                                      # print the tansu binary's path
#
# The topics and their partition counts come from cluster.toml ([kafka]), with the same
# EMOSTREAM_KAFKA__* environment overrides as the Rust tiers.
set -euo pipefail

TANSU_VERSION=0.6.0
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${EMOSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emostream}"
prefix="$cache/tansu-$TANSU_VERSION"
tansu="$prefix/bin/tansu"

say() { printf '[broker] %s\n' "$*" >&2; }

install() {
  if [[ -x $tansu ]]; then return; fi
  say "installing Tansu $TANSU_VERSION into $prefix (once per machine; about 10 minutes on 2 cores)"
  mkdir -p "$cache"
  # A private target dir keeps the build out of the clone; --locked pins Tansu's own lock file.
  CARGO_TARGET_DIR="$cache/tansu-build" cargo install --locked --root "$prefix" \
    tansu --version "$TANSU_VERSION" --features dynostore,libsql
  rm -rf "$cache/tansu-build"
  say "installed $tansu"
}

port=9092 data="$root/.run/broker" config="$root/cluster.toml"
parse_flags() {
  while [[ $# -gt 0 ]]; do
    case $1 in
      --port) port=$2; shift 2 ;;
      --data) data=$2; shift 2 ;;
      --config) config=$2; shift 2 ;;
      *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
  done
}

# name partitions, one topic per line, from cluster.toml plus EMOSTREAM_KAFKA__* overrides.
topics() {
  python3 - "$config" <<'PY'
import os, sys, tomllib
kafka = tomllib.load(open(sys.argv[1], "rb")).get("kafka", {})
for key, value in os.environ.items():
    if key.startswith("EMOSTREAM_KAFKA__"):
        field = key[len("EMOSTREAM_KAFKA__"):].lower()
        kafka[field] = value
print(kafka.get("events_topic", "emoji-events"), kafka.get("events_partitions", 4))
print(kafka.get("epochs_topic", "emoji-epochs"), kafka.get("epochs_partitions", 2))
print(kafka.get("progress_topic", "emoji-progress"), 1)
PY
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  install
  mkdir -p "$data"
  if [[ -f $data/tansu.pid ]] && kill -0 "$(cat "$data/tansu.pid")" 2>/dev/null; then
    say "already running (pid $(cat "$data/tansu.pid")) on port $port"
  else
    # SQLite paths are relative to the working directory, so the broker runs inside $data.
    (cd "$data" && exec "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db" >>"$data/tansu.log" 2>&1) &
    echo $! > "$data/tansu.pid"
    local deadline=$((SECONDS + 30))
    until answers; do
      if ! kill -0 "$(cat "$data/tansu.pid")" 2>/dev/null; then
        say "broker exited; its log:"; tail -20 "$data/tansu.log" >&2; exit 1
      fi
      ((SECONDS < deadline)) || { say "broker did not answer on port $port within 30 s"; exit 1; }
      sleep 0.05
    done
    say "listening on 127.0.0.1:$port (pid $(cat "$data/tansu.pid"), data $data)"
  fi
  while read -r name partitions; do
    # An existing topic is refused (exit 1) and left as it is; the listing below checks the result.
    "$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions "$partitions" "$name" >/dev/null 2>>"$data/tansu.log" || true
  done < <(topics)
  local listed; listed=$("$tansu" topic list --broker "tcp://127.0.0.1:$port")
  while read -r name partitions; do
    [[ $listed == *"\"name\":\"$name\""* ]] || { say "topic $name was not created; see $data/tansu.log"; exit 1; }
  done < <(topics)
  say "topics ready: $(topics | awk '{printf "%s(%s) ", $1, $2}')"
}

stop() {
  if [[ -f $data/tansu.pid ]]; then
    local pid; pid=$(cat "$data/tansu.pid")
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$data/tansu.pid"
    say "stopped"
  fi
}

cmd=${1:-}; shift || true
case $cmd in
  install) install ;;
  start) parse_flags "$@"; start ;;
  stop) parse_flags "$@"; stop ;;
  path) echo "$tansu" ;;
  *) echo "usage: $0 install|start|stop|path [--port P] [--data DIR] [--config FILE]" >&2; exit 2 ;;
esac
