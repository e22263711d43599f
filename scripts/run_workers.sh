#!/usr/bin/env bash
# Starts and supervises the timely worker processes of cluster.toml that live on this host.
#
#   scripts/run_workers.sh -n 4            # processes 0..3 (those whose host is this machine)
#   scripts/run_workers.sh -n 4 -p 2       # only process 2 (run one per host across machines)
#   scripts/run_workers.sh -n 4 -p 2,3     # processes 2 and 3 (this host's share)
#   scripts/run_workers.sh -n 2 -w 2 -c other.toml
#
# Timely has no fault tolerance: when one process dies the others lose their connections, so the
# supervisor restarts every local process (each host's supervisor does the same) and the cluster
# resumes from Kafka. SIGTERM/Ctrl-C stops every process cleanly and exits.
#
# A process that exits 3 was fenced: another cluster is publishing into the same topics (this
# cluster.toml started twice). Restarting would only race it again, so the supervisor stops every
# local process and exits 3 (docs/dataflow.md, "Exactly-once epochs"). A process that exits 4
# refused to start because a restart cannot help (the progress topic can lose records or has,
# or events a resume needs are deleted): the supervisor stops too and exits 4
# (docs/operations.md, "The progress topic"). A process that exits 75 lost its first progress
# record to its killed predecessor's late one: it is restarted like any failure, and resumes
# from that record (docs/dataflow.md, "Exactly-once epochs").
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
processes="" threads="" only="" config="$root/cluster.toml"
bin="${EMOSTREAM_BIN_DIR:-$root/target/release}/emostream-dataflow"

usage() { echo "usage: $0 -n PROCESSES [-w THREADS] [-p INDEX[,INDEX…]] [-c cluster.toml]" >&2; exit 2; }
while getopts "n:w:p:c:" opt; do
  case $opt in
    n) processes=$OPTARG ;;
    w) threads=$OPTARG ;;
    p) only=$OPTARG ;;
    c) config=$OPTARG ;;
    *) usage ;;
  esac
done
[[ $processes =~ ^[1-9][0-9]*$ ]] || usage
[[ -z $only || $only =~ ^[0-9]+(,[0-9]+)*$ ]] || usage
for i in ${only//,/ }; do ((i < processes)) || { echo "-p $i must be below -n $processes" >&2; exit 2; }; done
[[ -x $bin ]] || { echo "no $bin: build it first (cargo build --release -p emostream-dataflow)" >&2; exit 2; }

# timely's hostfile: line i is process i.
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/emostream-workers.XXXXXX")
hostfile="$run_dir/hostfile"
# Through a file, not a pipe into head: head closing the pipe early would fail the writer.
"$bin" --config "$config" --print-hostfile > "$run_dir/processes"
head -n "$processes" "$run_dir/processes" > "$hostfile"
if [[ $(wc -l < "$hostfile") -lt $processes ]]; then
  echo "cluster.toml lists fewer than $processes dataflow processes" >&2; exit 2
fi

local_addresses=" localhost ::1 $(hostname) $(hostname -I 2>/dev/null || true) "
is_local() {
  local host=${1%:*}
  host=${host#[}; host=${host%]}
  [[ $host == 127.* || $local_addresses == *" $host "* ]]
}

mine=()
for ((i = 0; i < processes; i++)); do
  line=$(sed -n "$((i + 1))p" "$hostfile")
  if [[ -n $only ]]; then
    [[ ",$only," == *",$i,"* ]] && mine+=("$i")
  elif is_local "$line"; then
    mine+=("$i")
  fi
done
[[ ${#mine[@]} -gt 0 ]] || { echo "no process of the first $processes runs on this host; use -p" >&2; exit 2; }

pids=()
stopping=0
start_all() {
  pids=()
  for i in "${mine[@]}"; do
    args=(--config "$config" -n "$processes" -p "$i" -h "$hostfile")
    [[ -n $threads ]] && args+=(-w "$threads")
    "$bin" "${args[@]}" &
    pids+=($!)
    echo "run_workers: process $i of $processes started (pid $!)" >&2
  done
}

# TERM first so each process publishes what has closed; KILL whatever is still there after 10 s.
stop_all() {
  local pid deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

on_signal() { stopping=1; }
trap on_signal TERM INT

while true; do
  start_all
  set +e
  wait -n "${pids[@]}"
  status=$?
  set -e
  if ((stopping)); then
    echo "run_workers: stopping" >&2
    stop_all
    rm -rf "$run_dir"
    exit 0
  fi
  if ((status == 3)); then
    echo "run_workers: fenced: another cluster is publishing into these topics; stopping, not restarting" >&2
    stop_all
    rm -rf "$run_dir"
    exit 3
  fi
  if ((status == 4)); then
    echo "run_workers: the cluster refused to start (its log says why and what to do); stopping, not restarting" >&2
    stop_all
    rm -rf "$run_dir"
    exit 4
  fi
  echo "run_workers: a worker process exited ($status); restarting the whole cluster" >&2
  stop_all
  ((stopping)) && { rm -rf "$run_dir"; exit 0; }
  sleep 1
done
