#!/usr/bin/env bash
# README command 1: the whole system on this machine — broker, gateway, a 2-process timely
# cluster, and the broadcaster topology of cluster.toml (main publisher, 3 cluster publishers,
# 3 subscribers each). Installs what it needs, shows progress, prints the URLs, and stops
# everything cleanly on Ctrl-C or SIGTERM.
#
#   scripts/up.sh                 # uses cluster.toml
#   scripts/up.sh -n 4            # four worker processes instead of two
#   scripts/up.sh -c other.toml   # another configuration
#   scripts/up.sh -k              # no development broker: use the Kafka that [kafka] brokers names
#   EMOSTREAM_BIN_DIR=DIR scripts/up.sh   # run the binaries in DIR; build nothing
#
# Exit status: 0 after Ctrl-C or SIGTERM; 1 when a tier does not come up or dies while running,
# with its name and log. Either way every process it started is stopped, the broker's
# PostgreSQL included, also when its output pipe is already gone (`up.sh | tee`: the messages
# then go to .run/logs/up.log). scripts/test_up.sh checks these paths with stand-in binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

processes=2 config="$root/cluster.toml" dev_broker=1
while getopts "n:c:k" opt; do
  case $opt in
    n) processes=$OPTARG ;;
    c) config=$(realpath "$OPTARG") ;;
    k) dev_broker=0 ;;
    *) echo "usage: $0 [-n WORKER_PROCESSES] [-c cluster.toml] [-k]" >&2; exit 2 ;;
  esac
done

run="$root/.run"
logs="$run/logs"
bin="${EMOSTREAM_BIN_DIR:-$root/target/release}"
mkdir -p "$logs"

# A closed output pipe must not kill the script (SIGPIPE) before it has stopped what it started:
# writes fail instead, and the first failed one sends every later message to up.log. One line
# per argument.
trap '' PIPE
say() { printf '%s\n' "$@" >&2 2>/dev/null || { exec 2>>"$logs/up.log"; printf '%s\n' "$@" >&2; }; }
step() { say $'\n\033[1m==> '"$*"$'\033[0m'; }

# Settings as the tiers read them (cluster.toml plus EMOSTREAM_* overrides), through the project's
# own binary, built in step 2.
setting() { "$bin/emostream-config" --config "$config" get "$1"; }
# Each cluster as "name listen sub1,sub2,…".
clusters() { "$bin/emostream-config" --config "$config" clusters; }

# Everything started, in order; on any exit (Ctrl-C, SIGTERM, a failure) stop_all stops it in
# reverse order, then the broker and its PostgreSQL through broker.sh's own stop.
pids=() names=() broker_started=0
stop_all() {
  local status=$? i
  trap - EXIT
  trap '' INT TERM
  step "stopping"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    wait "${pids[i]}" 2>/dev/null || true
    say "    stopped ${names[i]}"
  done
  if ((broker_started)); then
    EMOSTREAM_BIN_DIR="$bin" scripts/broker.sh stop --data "$run/broker" --config "$config" || true
  fi
  exit "$status"
}
trap stop_all EXIT
trap 'exit 0' INT TERM

start() {
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
  say "$(printf '    %-12s pid %-7s log %s' "$name" "$!" "$logs/$name.log")"
}
pid_of() { local i; for i in "${!names[@]}"; do [[ ${names[i]} != "$1" ]] || { echo "${pids[i]}"; return; }; done; }

# Ends the run: NAME's failure, the end of its log, and exit 1 (which stops everything).
fail() {
  say "up.sh: $2" "--- last lines of $logs/$1.log:"
  say "$(tail -n 15 "$logs/$1.log" 2>/dev/null)"
  exit 1
}
# NAME (PID) is gone: its status (bash has reaped it) and fail.
exited() { local status=0; wait "$2" || status=$?; fail "$1" "$1 (pid $2) exited with status $status $3"; }
answers() { local hp=$1; (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; }
wait_for() {
  local name=$1 hp=$2 pid deadline=$((SECONDS + 60))
  pid=$(pid_of "$name")
  until answers "$hp"; do
    kill -0 "$pid" 2>/dev/null || exited "$name" "$pid" "before it answered on $hp"
    ((SECONDS < deadline)) || fail "$name" "$name did not answer on $hp within 60 s"
    sleep 0.1
  done
}

if ((dev_broker)); then
  step "1/5 broker: Nisshi 0.8.1 (built once per machine into ~/.cache/emostream, about 20 minutes)"
  scripts/broker.sh install
else
  step "1/5 broker: none started (-k)"
fi

if [[ -n ${EMOSTREAM_BIN_DIR:-} ]]; then
  step "2/5 the binaries in $bin (EMOSTREAM_BIN_DIR; nothing built)"
else
  step "2/5 building the release binaries (a few minutes the first time)"
  cargo build --release --locked --workspace --bins
fi

if ((dev_broker)); then
  step "3/5 broker for $(setting kafka.brokers)"
  broker_started=1
  EMOSTREAM_BIN_DIR="$bin" scripts/broker.sh start --data "$run/broker" --config "$config"
else
  step "3/5 using the Kafka cluster at $(setting kafka.brokers)"
fi

step "4/5 gateway, $processes worker processes, broadcaster"
start gateway "$bin/emostream-gateway" --config "$config"
start workers env EMOSTREAM_BIN_DIR="$bin" scripts/run_workers.sh -n "$processes" -c "$config"
start main "$bin/emostream-broadcaster" --config "$config" main
subscribers=() subscriber_urls=()
while read -r name _listen subs; do
  start "$name" "$bin/emostream-broadcaster" --config "$config" cluster --name "$name"
  i=0
  for sub in ${subs//,/ }; do
    start "$name-s$i" "$bin/emostream-broadcaster" --config "$config" subscriber --name "$name-s$i"
    subscribers+=("$name-s$i") subscriber_urls+=("$sub")
    i=$((i + 1))
  done
done < <(clusters)
((${#subscribers[@]})) || { say "up.sh: $config names no subscriber"; exit 1; }

gateway=$(setting gateway.listen)
main=$(setting broadcaster.main)
wait_for gateway "$gateway"
wait_for main "$main"
for i in "${!subscribers[@]}"; do wait_for "${subscribers[i]}" "${subscriber_urls[i]}"; done
for i in "${!pids[@]}"; do kill -0 "${pids[i]}" 2>/dev/null || exited "${names[i]}" "${pids[i]}" "at start"; done

step "5/5 up"
say "    viewer page    http://${subscriber_urls[0]}/   (tap emojis, watch the swarm; every subscriber serves it)
    gateway        http://$gateway   (POST /send_emoji, POST /v1/streams/{stream}/emojis, GET /metrics)
    register       http://$main/register   (answers with a subscriber for a new viewer)
    topology       http://$main/v1/topology
    viewers        ws://${subscriber_urls[0]}/v1/streams/main/ws   (any of: ${subscriber_urls[*]})
    logs           $logs

    try:  curl -s -XPOST http://$gateway/send_emoji -H 'content-type: application/json' \\
            -d '{\"user_id\":\"me\",\"emoji_type\":\"🔥\",\"timestamp\":\"2026-11-23T12:00:00Z\"}'
    Ctrl-C stops everything."

# Every tier runs until Ctrl-C; one that exits on its own ends the run (run_workers.sh restarts
# its own worker processes, so "workers" exiting means the supervisor gave up, e.g. fenced: 3).
died="" status=0
wait -n -p died "${pids[@]}" || status=$?
# Exit 4: the workers refused to start (their log says why); on this development broker the
# usual cause is data in .run/broker from before the progress topic kept every record.
refused="the dataflow refused to start (its log below says why); if .run/broker holds data from an older checkout, start over with: rm -rf .run/broker && scripts/up.sh"
for i in "${!pids[@]}"; do
  if [[ ${pids[i]} == "$died" ]]; then
    [[ ${names[i]} == workers && $status == 4 ]] && say "up.sh: $refused"
    fail "${names[i]}" "${names[i]} (pid $died) exited with status $status while running; stopping everything"
  fi
done
say "up.sh: wait ended ($status) with no tier gone; stopping everything"
exit 1
