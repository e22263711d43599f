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

# One "name partitions" line per topic, from cluster.toml's [kafka] section plus the same
# EMOSTREAM_KAFKA__* overrides the Rust tiers honour (plain awk: no TOML tool needed).
kafka_setting() {
  local field=$1 default=$2 env="EMOSTREAM_KAFKA__${1^^}"
  if [[ -n ${!env:-} ]]; then echo "${!env}"; return; fi
  awk -v field="$field" -v default="$default" '
    /^[[:space:]]*\[/ { in_kafka = ($0 ~ /^[[:space:]]*\[kafka\][[:space:]]*$/) }
    in_kafka && $0 ~ "^[[:space:]]*" field "[[:space:]]*=" {
      sub(/^[^=]*=[[:space:]]*/, ""); sub(/[[:space:]]*#.*$/, ""); gsub(/"/, ""); print; found = 1; exit
    }
    END { if (!found) print default }' "$config"
}
topics() {
  echo "$(kafka_setting events_topic emoji-events) $(kafka_setting events_partitions 4)"
  echo "$(kafka_setting epochs_topic emoji-epochs) $(kafka_setting epochs_partitions 2)"
  echo "$(kafka_setting progress_topic emoji-progress) 1"
  echo "$(kafka_setting trends_topic emoji-trends) 2"
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
