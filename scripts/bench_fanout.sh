#!/usr/bin/env bash
# Fan-out benchmark: how many concurrent viewers this machine holds, the memory each idle one costs
# the subscribers, and p99 from the main publisher's emit to a viewer's receipt at that load.
#
#   scripts/bench_fanout.sh                 # levels 10000 25000 50000 60000
#   LEVELS="50000" scripts/bench_fanout.sh  # one level
#   KEEP_GOING=1 scripts/bench_fanout.sh    # run every level even after one fails
#
# Topology: the main publisher with --synthetic-ms 2000 (one epoch of stream "main" every 2 s,
# end_ms = the moment it is emitted, instead of reading Kafka), 2 cluster publishers, SUBSCRIBERS
# subscribers, and SWARMS viewer-swarm processes (emostream-swarm) splitting each level's viewers
# evenly over the subscribers. A process here may hold at most 20,000 open files, so no subscriber
# and no swarm may hold more than ~19,000 sockets: 6 subscribers and 4 swarms cover 75,000.
# A level passes when every viewer connected, none missed an epoch, and p99 <= 200 ms; the run
# stops at the first level that fails. Memory per connection = (sum of the subscribers' RSS with
# the level's viewers connected and idle - the same before they connected) / viewers; kernel socket
# buffers are not in RSS and are reported separately from /proc/net/sockstat.
#
# The swarms share the machine's two cores with what they measure, so the same swarms then watch
# the floor: SUBSCRIBERS emostream-fanout-floor processes writing the same frame at the same
# moments with nothing but one write per socket. "p99 / floor" is the broadcaster's overhead over
# the least any fan-out can do here, measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

LEVELS=${LEVELS:-"10000 25000 50000 60000"}
SUBSCRIBERS=${SUBSCRIBERS:-6}
SWARMS=${SWARMS:-4}
MEASURE_S=${MEASURE_S:-20}
BASE_PORT=${BASE_PORT:-19100}
P99_LIMIT_MS=200

step() { printf '\n==> %s\n' "$*" >&2; }

step "building (release)"
cargo build --release --locked -p emostream-broadcaster -p emostream-tools
bin=target/release
work=$(mktemp -d /tmp/emostream-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

main="127.0.0.1:$BASE_PORT"
per_cluster=$(( (SUBSCRIBERS + 1) / 2 ))
{
    printf '[kafka]\nbrokers = "127.0.0.1:1"\n[gateway]\nlisten = "127.0.0.1:0"\n'
    # The subscribers share the machine's cores, and their fan-outs run at once: one lane each.
    printf '[dataflow]\nprocesses = ["127.0.0.1:0"]\n[broadcaster]\nmain = "%s"\nfanout_lanes = 1\n' "$main"
    for c in 0 1; do
        printf '[[broadcaster.clusters]]\nname = "c%d"\nlisten = "127.0.0.1:%d"\nsubscribers = [' \
            "$c" $((BASE_PORT + 10 * (c + 1)))
        sep=""
        for i in $(seq 0 $((per_cluster - 1))); do
            if (( c * per_cluster + i < SUBSCRIBERS )); then
                printf '%s"127.0.0.1:%d"' "$sep" $((BASE_PORT + 10 * (c + 1) + i + 1))
                sep=", "
            fi
        done
        printf ']\n'
    done
} >"$work/cluster.toml"

start() { # name, args…
    local name=$1; shift
    RUST_LOG=warn "$bin/emostream-broadcaster" --config "$work/cluster.toml" "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    echo $! >"$work/$name.pid"
}

step "starting main (synthetic, every 2000 ms), 2 clusters, $SUBSCRIBERS subscribers"
start main --role main --synthetic-ms 2000
urls=()
sub_pids=()
for c in 0 1; do
    start "c$c" --role cluster --name "c$c"
    for i in $(seq 0 $((per_cluster - 1))); do
        if (( c * per_cluster + i < SUBSCRIBERS )); then
            start "c$c-s$i" --role subscriber --name "c$c-s$i"
            sub_pids+=("$(cat "$work/c$c-s$i.pid")")
            urls+=("ws://127.0.0.1:$((BASE_PORT + 10 * (c + 1) + i + 1))")
        fi
    done
done
subscribers_csv=$(IFS=,; echo "${urls[*]}")
# The yardstick: as many bare fan-out processes as subscribers, each writing the same frame to its
# viewers at the same moments, one write per socket from one thread (tools/src/bin/fanout_floor.rs).
floor_urls=()
for i in $(seq 0 $((SUBSCRIBERS - 1))); do
    "$bin/emostream-fanout-floor" --listen "127.0.0.1:$((BASE_PORT + 200 + i))" >"$work/floor-$i.log" 2>&1 &
    pids+=($!)
    floor_urls+=("ws://127.0.0.1:$((BASE_PORT + 200 + i))")
done
floor_csv=$(IFS=,; echo "${floor_urls[*]}")
for _ in $(seq 1 100); do
    live=$(curl -s "http://$main/v1/topology" | grep -o '"url"' | wc -l || true)
    [[ $live -ge $SUBSCRIBERS ]] && break
    sleep 0.1
done
[[ $live -ge $SUBSCRIBERS ]] || { echo "only $live of $SUBSCRIBERS subscribers came up" >&2; exit 1; }

rss_kib() { # sum of VmRSS over the subscribers
    local total=0 pid
    for pid in "${sub_pids[@]}"; do
        total=$(( total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status") ))
    done
    echo "$total"
}
sock_kib() { # kernel memory of all TCP sockets, from /proc/net/sockstat (pages)
    echo $(( $(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat) * $(getconf PAGESIZE) / 1024 ))
}

# Runs SWARMS swarm processes of $2 viewers in all against the comma-separated URLs $3, tagged $1;
# sets connected, missing, p50, p99, and rss1/sock1 (read once all have connected, between epochs).
swarm() {
    local tag=$1 n=$2 urls=$3 s share pid
    local pids=()
    for s in $(seq 0 $((SWARMS - 1))); do
        share=$(( n / SWARMS + (s < n % SWARMS ? 1 : 0) ))
        "$bin/emostream-swarm" --subscribers "$urls" --viewers "$share" \
            --offset "$s" --seconds "$MEASURE_S" --connect-per-s 2500 \
            --out "$work/$tag-$n-$s.json" >"$work/$tag-$n-$s.out" 2>"$work/$tag-$n-$s.err" &
        pids+=($!)
    done
    for _ in $(seq 1 600); do
        ready=$(cat "$work"/"$tag"-"$n"-*.err 2>/dev/null | grep -c '^ALL CONNECTED' || true)
        [[ $ready -ge $SWARMS ]] && break
        sleep 0.2
    done
    sleep 1
    rss1=$(rss_kib); sock1=$(sock_kib)
    tail -n 1 "$work/$tag-$n-0.err" >&2
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    "$bin/emostream-swarm" merge "$work"/"$tag"-"$n"-*.json | tee "$work/merged-$tag-$n.md" >&2
    local line
    line=$(grep '^SWARM' "$work/merged-$tag-$n.md")
    connected=$(sed -E 's/.*connected=([0-9]+).*/\1/' <<<"$line")
    missing=$(sed -E 's/.*missing=([0-9]+).*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50_ms=(-?[0-9]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99_ms=(-?[0-9]+).*/\1/' <<<"$line")
    # Let the servers notice the swarm's sockets are gone before the next run.
    sleep 3
}

results="$work/results.md"
printf '| viewers | connected | missing | p50 emit→receipt | p99 emit→receipt | floor p99 | p99 / floor | subscriber RSS / viewer | kernel TCP mem / viewer |\n|---|---|---|---|---|---|---|---|---|\n' >"$results"
best=0
for n in $LEVELS; do
    step "level $n viewers: the broadcaster ($SWARMS swarms over $SUBSCRIBERS subscribers, measuring $MEASURE_S s)"
    rss0=$(rss_kib); sock0=$(sock_kib)
    swarm broadcaster "$n" "$subscribers_csv"
    per_rss=$(awk -v a="$rss0" -v b="$rss1" -v n="$connected" 'BEGIN { printf "%.1f KiB", n ? (b - a) / n : 0 }')
    per_sock=$(awk -v a="$sock0" -v b="$sock1" -v n="$connected" 'BEGIN { printf "%.1f KiB", n ? (b - a) / n / 2 : 0 }')
    held=$(( connected >= n && missing == 0 && p99 >= 0 && p99 <= P99_LIMIT_MS ))
    b_connected=$connected; b_missing=$missing; b_p50=$p50; b_p99=$p99
    step "level $n viewers: the floor ($SUBSCRIBERS emostream-fanout-floor processes, the same swarms)"
    swarm floor "$n" "$floor_csv"
    ratio=$(awk -v a="$b_p99" -v b="$p99" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '| %d | %d | %d | %d ms | %d ms | %d ms | %s | %s | %s |\n' "$n" "$b_connected" "$b_missing" \
        "$b_p50" "$b_p99" "$p99" "$ratio" "$per_rss" "$per_sock" >>"$results"
    if (( ! held )); then
        echo "level $n did not hold (connected $b_connected, missing $b_missing, p99 $b_p99 ms)" >&2
        [[ -n ${KEEP_GOING:-} ]] && continue
        break
    fi
    best=$n
done

step "results (kernel TCP memory per viewer counts one socket of each pair: the subscriber's)"
cat "$results"
echo
echo "floor: the same swarms against bare single-threaded write loops of the same frame (no tiers, no pings);"
echo "p99 / floor is how much the broadcaster adds over the least any fan-out on this machine can do."
echo "largest level held: $best viewers (target: >= 50000, <= 16 KiB per idle connection, p99 <= ${P99_LIMIT_MS} ms)"
