#!/usr/bin/env bash
# Fan-out benchmark: how many concurrent viewers this machine holds, the memory each idle one costs
# the subscribers, and p99 from the main publisher's emit to a viewer's receipt at that load.
#
#   scripts/bench_fanout.sh                 # levels 10000 25000 50000 60000
#   LEVELS="50000" scripts/bench_fanout.sh  # one level
#   KEEP_GOING=1 scripts/bench_fanout.sh    # run every level even after one fails
#   BENCH_LOG=warn,emostream_broadcaster::fanout=debug KEEP_WORK=1 …  # keep the tiers' logs
#
# Topology: the main publisher with --synthetic-ms 2000 (one epoch of stream "main" every 2 s,
# end_ms = the moment it is emitted, instead of reading Kafka), 2 cluster publishers, SUBSCRIBERS
# subscribers, and SWARMS viewer-swarm processes (emostream-swarm) splitting each level's viewers
# evenly over the subscribers. A process here may hold at most 20,000 open files, so no subscriber
# and no swarm may hold more than ~19,000 sockets: 6 subscribers and 4 swarms cover 75,000.
# A level passes when every viewer connected, none missed an epoch, and p99 <= 200 ms; the run
# stops at the first level that fails.
#
# Receipt is the moment a frame reached the viewer's socket: the kernel's receive stamp
# (SO_TIMESTAMPNS), which is when the bytes arrived at the viewer's machine. The swarms run in the
# idle scheduling class (--idle), so they read only when the tiers leave a core free: viewers on
# machines of their own would take no core from the subscribers either. The tiers' sends still
# pay for the viewers' side of each TCP delivery (on loopback the receiving stack runs inside the
# sender's send), so this is no kinder than real viewers. When the swarm read each frame is
# reported beside it ("read p99"); that adds the swarms' own wait for a core.
#
# Memory per connection = growth of the subscribers' summed RSS since before the first level, per
# viewer, read while the viewers are connected and idle; and the growth of the kernel's slab
# memory (sockets, their files, epoll entries) per viewer, halved: each viewer is two sockets here.
#
# The same swarms then watch the floor: SUBSCRIBERS emostream-fanout-floor processes writing the
# same frame at the same moments with nothing but one write per socket. "p99 / floor" is the
# broadcaster's overhead over the least any fan-out can do here, measured in the same run.
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
    if [[ -n ${KEEP_WORK:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

main="127.0.0.1:$BASE_PORT"
per_cluster=$(( (SUBSCRIBERS + 1) / 2 ))
{
    printf '[kafka]\nbrokers = "127.0.0.1:1"\n[gateway]\nlisten = "127.0.0.1:0"\n'
    # The subscribers share the machine's cores, and their fan-outs run at once: one lane each.
    printf '[dataflow]\nprocesses = ["127.0.0.1:0"]\n[broadcaster]\nmain = "%s"\nsubscriber_threads = 1\n' "$main"
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
    RUST_LOG=${BENCH_LOG:-warn} "$bin/emostream-broadcaster" --config "$work/cluster.toml" "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    echo $! >"$work/$name.pid"
}

step "starting main (synthetic, every 2000 ms), 2 clusters, $SUBSCRIBERS subscribers"
start main main --synthetic-ms 2000
urls=()
sub_pids=()
for c in 0 1; do
    start "c$c" cluster --name "c$c"
    for i in $(seq 0 $((per_cluster - 1))); do
        if (( c * per_cluster + i < SUBSCRIBERS )); then
            start "c$c-s$i" subscriber --name "c$c-s$i"
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
slab_kib() { # the kernel's slab memory: sockets, their files and epoll entries live there
    awk '/^Slab:/ {print $2}' /proc/meminfo
}

# Runs SWARMS swarm processes of $2 viewers in all against the comma-separated URLs $3, tagged $1;
# sets connected, missing, p50, p99, p99_read, and rss1/slab1 (read once all have connected, between epochs).
swarm() {
    local tag=$1 n=$2 targets=$3 s share pid
    local pids=()
    for s in $(seq 0 $((SWARMS - 1))); do
        share=$(( n / SWARMS + (s < n % SWARMS ? 1 : 0) ))
        "$bin/emostream-swarm" --subscribers "$targets" --viewers "$share" \
            --offset "$s" --seconds "$MEASURE_S" --connect-per-s 2500 --idle \
            --out "$work/$tag-$n-$s.json" >"$work/$tag-$n-$s.out" 2>"$work/$tag-$n-$s.err" &
        pids+=($!)
    done
    for _ in $(seq 1 600); do
        ready=$(cat "$work"/"$tag"-"$n"-*.err 2>/dev/null | grep -c '^ALL CONNECTED' || true)
        [[ $ready -ge $SWARMS ]] && break
        sleep 0.2
    done
    sleep 1
    rss1=$(rss_kib); slab1=$(slab_kib)
    tail -n 1 "$work/$tag-$n-0.err" >&2
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    "$bin/emostream-swarm" merge "$work"/"$tag"-"$n"-*.json | tee "$work/merged-$tag-$n.md" >&2
    local line
    line=$(grep '^SWARM' "$work/merged-$tag-$n.md")
    connected=$(sed -E 's/.*connected=([0-9]+).*/\1/' <<<"$line")
    missing=$(sed -E 's/.*missing=([0-9]+).*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50_ms=(-?[0-9]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99_ms=(-?[0-9]+).*/\1/' <<<"$line")
    p99_read=$(sed -E 's/.*p99_read_ms=(-?[0-9]+).*/\1/' <<<"$line")
    # Let the servers notice the swarm's sockets are gone before the next run.
    sleep 3
}

results="$work/results.md"
printf '| viewers | connected | missing | p50 emit→receipt | p99 emit→receipt | floor p99 | p99 / floor | read p99 (floor) | subscriber RSS / viewer | kernel slab / connection |\n|---|---|---|---|---|---|---|---|---|---|\n' >"$results"
best=0 best_p99=0 last_n=0 last_rss="0 KiB" last_slab="0 KiB" last_p99=0 last_floor_p99=0
# Baselines from before any viewer: memory a level frees stays in the subscribers' RSS (the
# allocator keeps it for reuse), so a per-level baseline would hide the next level's cost.
rss0=$(rss_kib); slab0=$(slab_kib)
for n in $LEVELS; do
    step "level $n viewers: the broadcaster ($SWARMS swarms over $SUBSCRIBERS subscribers, measuring $MEASURE_S s)"
    swarm broadcaster "$n" "$subscribers_csv"
    per_rss=$(awk -v a="$rss0" -v b="$rss1" -v n="$connected" 'BEGIN { printf "%.1f KiB", n ? (b - a) / n : 0 }')
    per_slab=$(awk -v a="$slab0" -v b="$slab1" -v n="$connected" 'BEGIN { printf "%.1f KiB", n ? (b - a) / n / 2 : 0 }')
    held=$(( connected >= n && missing == 0 && p99 >= 0 && p99 <= P99_LIMIT_MS ))
    b_connected=$connected; b_missing=$missing; b_p50=$p50; b_p99=$p99; b_p99_read=$p99_read
    step "level $n viewers: the floor ($SUBSCRIBERS emostream-fanout-floor processes, the same swarms)"
    swarm floor "$n" "$floor_csv"
    ratio=$(awk -v a="$b_p99" -v b="$p99" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    last_n=$n last_rss=$per_rss last_slab=$per_slab last_p99=$b_p99 last_floor_p99=$p99
    printf '| %d | %d | %d | %d ms | %d ms | %d ms | %s | %d ms (%d ms) | %s | %s |\n' "$n" "$b_connected" \
        "$b_missing" "$b_p50" "$b_p99" "$p99" "$ratio" "$b_p99_read" "$p99_read" "$per_rss" "$per_slab" >>"$results"
    if (( ! held )); then
        echo "level $n did not hold (connected $b_connected, missing $b_missing, p99 $b_p99 ms)" >&2
        [[ -n ${KEEP_GOING:-} ]] && continue
        break
    fi
    best=$n best_p99=$b_p99
done

step "results"
cat "$results"
echo
echo "floor: the same swarms against bare single-threaded write loops of the same frame (no tiers, no pings);"
echo "p99 / floor is how much the broadcaster adds over the least any fan-out on this machine can do."
echo "emit→receipt: until the frame is on the viewer's socket (kernel receive stamp); read p99: until the"
echo "idle-class swarm read it, which adds its wait for a core the tiers had (viewers elsewhere would not wait)."
echo "subscriber RSS / viewer: growth of the subscribers' RSS since before the first level; kernel slab /"
echo "connection: growth of the kernel's slab memory, halved, as each viewer is two sockets on this machine."
echo "largest level held: $best viewers (target: >= 50000, <= 16 KiB per idle connection, p99 <= ${P99_LIMIT_MS} ms)"

# The figures the capacity model (scripts/capacity.py) reads: the largest level held, and the
# memory per viewer of the last level measured (memory does not depend on how loaded the cores were).
results_dir=${RESULTS_DIR:-$PWD/.run/bench}
mkdir -p "$results_dir"
cat >"$results_dir/fanout.txt" <<RESULTS
# scripts/bench_fanout.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $SUBSCRIBERS subscribers, levels $LEVELS
machine_cores=$(nproc)
held_viewers=$best
held_p99_ms=$best_p99
p99_limit_ms=$P99_LIMIT_MS
last_level_viewers=$last_n
last_level_p99_ms=$last_p99
last_level_floor_p99_ms=$last_floor_p99
subscriber_rss_per_viewer_kib=${last_rss% KiB}
kernel_per_viewer_kib=${last_slab% KiB}
RESULTS
echo "results for scripts/capacity.py: $results_dir/fanout.txt"
