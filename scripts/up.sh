#!/usr/bin/env bash
# README command 1: the whole system on this machine — broker, gateway, a 2-process timely
# cluster, and the broadcaster topology of cluster.toml (main publisher, 3 cluster publishers,
# 3 subscribers each). Installs what it needs, shows progress, prints the URLs, and stops
# everything cleanly on Ctrl-C.
#
#   scripts/up.sh            # uses cluster.toml
#   scripts/up.sh -n 4       # four worker processes instead of two
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

processes=2
while getopts "n:" opt; do
  case $opt in
    n) processes=$OPTARG ;;
    *) echo "usage: $0 [-n WORKER_PROCESSES]" >&2; exit 2 ;;
  esac
done

config="$root/cluster.toml"
run="$root/.run"
logs="$run/logs"
bin="$root/target/release"
mkdir -p "$logs"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

# Settings as the tiers read them (cluster.toml plus EMOSTREAM_* overrides), through the project's
# own binary, built in step 2.
setting() { "$bin/emostream-config" --config "$config" get "$1"; }
# Each cluster as "name listen sub1,sub2,…".
clusters() { "$bin/emostream-config" --config "$config" clusters; }

step "1/5 broker: Nisshi 0.8.1 (built once per machine into ~/.cache/emostream, about 20 minutes)"
scripts/broker.sh install

step "2/5 building the release binaries (a few minutes the first time)"
cargo build --release --locked --workspace --bins

pids=()
names=()
stop_all() {
  trap - INT TERM
  step "stopping"
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    wait "${pids[i]}" 2>/dev/null || true
    printf '    stopped %s\n' "${names[i]}" >&2
  done
  EMOSTREAM_BIN_DIR="$bin" scripts/broker.sh stop --data "$run/broker" --config "$config"
  exit 0
}
trap stop_all INT TERM

start() {
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
  printf '    %-12s pid %-7s log %s\n' "$name" "$!" "$logs/$name.log" >&2
}

answers() { local hp=$1; (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; }
wait_for() {
  local what=$1 hp=$2 deadline=$((SECONDS + 60))
  until answers "$hp"; do
    ((SECONDS < deadline)) || { echo "$what did not come up on $hp; see $logs" >&2; stop_all; }
    sleep 0.1
  done
}

step "3/5 broker for $(setting kafka.brokers)"
EMOSTREAM_BIN_DIR="$bin" scripts/broker.sh start --data "$run/broker" --config "$config"

step "4/5 gateway, $processes worker processes, broadcaster"
start gateway "$bin/emostream-gateway" --config "$config"
start workers env EMOSTREAM_BIN_DIR="$bin" scripts/run_workers.sh -n "$processes" -c "$config"
start main "$bin/emostream-broadcaster" --config "$config" main
subscriber_urls=()
while read -r name _listen subs; do
  start "$name" "$bin/emostream-broadcaster" --config "$config" cluster --name "$name"
  i=0
  for sub in ${subs//,/ }; do
    start "$name-s$i" "$bin/emostream-broadcaster" --config "$config" subscriber --name "$name-s$i"
    subscriber_urls+=("$sub")
    i=$((i + 1))
  done
done < <(clusters)

gateway=$(setting gateway.listen)
main=$(setting broadcaster.main)
wait_for gateway "$gateway"
wait_for "main publisher" "$main"
for sub in "${subscriber_urls[@]}"; do wait_for subscriber "$sub"; done

step "5/5 up"
cat >&2 <<TXT
    viewer page    http://${subscriber_urls[0]}/   (tap emojis, watch the swarm; every subscriber serves it)
    gateway        http://$gateway   (POST /send_emoji, POST /v1/streams/{stream}/emojis, GET /metrics)
    register       http://$main/register   (answers with a subscriber for a new viewer)
    topology       http://$main/v1/topology
    viewers        ws://${subscriber_urls[0]}/v1/streams/main/ws   (any of: ${subscriber_urls[*]})
    logs           $logs

    try:  curl -s -XPOST http://$gateway/send_emoji -H 'content-type: application/json' \\
            -d '{"user_id":"me","emoji_type":"🔥","timestamp":"2026-11-23T12:00:00Z"}'
    Ctrl-C stops everything.
TXT
wait
