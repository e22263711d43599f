#!/usr/bin/env bash
# Fan-out benchmark: how many concurrent viewers this machine holds, the memory each idle one costs
# the subscribers, and p99 from the main publisher's emit to a viewer's receipt at that load, each
# level measured RUNS times alternating with the floor (broadcaster, floor, broadcaster, ...).
#
#   scripts/bench_fanout.sh                          # levels 10000 25000 50000 60000, 5 runs each
#   LEVELS="50000" scripts/bench_fanout.sh           # one level
#   LEVELS=2000 RUNS=2 MEASURE_S=6 scripts/bench_fanout.sh   # a smoke test of the script itself
#   KEEP_GOING=1 scripts/bench_fanout.sh             # run every level even after one fails
#   BENCH_LOG=warn,emostream_broadcaster::fanout=debug KEEP_WORK=1 …  # keep the tiers' logs
#
# Topology: the main publisher with --synthetic-ms 2000 (every 2 s, stream "main"'s epoch frame of
# 30 emojis, its trending and sentiment frames and the popular frame, 2.8 KB in all, each with
# end_ms = the moment they are emitted, instead of reading Kafka), 2 cluster publishers,
# SUBSCRIBERS subscribers, and SWARMS viewer-swarm processes (emostream-swarm) splitting each
# level's viewers evenly over the subscribers. A process here may hold at most 20,000 open files,
# so no subscriber and no swarm may hold more than ~19,000 sockets: 6 subscribers and 4 swarms
# cover 75,000.
#
# Receipt (the headline) is when the viewer read the frame: when the read() that returned its last
# bytes returned, as an ordinary client has it. The swarms run at normal priority, as ordinary
# clients do, so on this one machine they compete with the tiers for the cores. The kernel's
# receive stamp (SO_TIMESTAMPNS) is reported beside it as the server-side fan-out time: on loopback
# the receiving stack runs inside the server's send, so the stamp says when the server had handed
# the frame over, not when a client had it. Every frame of the mix is timed, trend frames included.
#
# The floor: SUBSCRIBERS emostream-fanout-floor processes writing the same frames at the same
# moments with nothing but one write per frame per socket, watched by the same swarms. Each run of
# the broadcaster is followed by one of the floor, so both see the same machine; "p99 / floor" is
# the broadcaster's overhead over the least any fan-out can do here.
#
# A level holds when in every broadcaster run every viewer connected and stayed, no frame went
# missing, and the median over the runs of the read p99 is <= 200 ms; the spread (min-max, median)
# is reported for both the broadcaster and the floor. The run stops at the first level that fails.
#
# Memory per connection = growth of the subscribers' summed RSS since before the first level, per
# viewer, read while the viewers are connected and idle; and the growth of the kernel's slab
# memory (sockets, their files, epoll entries) per viewer, halved: each viewer is two sockets here.
set -euo pipefail
cd "$(dirname "$0")/.."

LEVELS=${LEVELS:-"10000 25000 50000 60000"}
SUBSCRIBERS=${SUBSCRIBERS:-6}
SWARMS=${SWARMS:-4}
MEASURE_S=${MEASURE_S:-20}
RUNS=${RUNS:-5}
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
# The yardstick: as many bare fan-out processes as subscribers, each writing the same frames to its
# viewers at the same moments, one write per frame per socket from one thread
# (tools/src/bin/fanout_floor.rs).
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

# Sockets still open on the local ports given (the servers' side of viewer connections),
# listeners and TIME-WAIT aside.
open_sockets() {
    local filter="" port
    for port in "$@"; do filter+="${filter:+ or }sport = :$port"; done
    ss -Htn state connected exclude time-wait "( $filter )" | wc -l
}

# Runs SWARMS swarm processes of $2 viewers in all against the comma-separated URLs $3, tagged $1,
# whose servers listen on the local ports "$4" (space-separated); sets connected, dropped, missing, lagged,
# p50_read, p99_read, p50_stamp, p99_stamp, and rss1/slab1 (read once all have connected, between
# epochs).
swarm() {
    local tag=$1 n=$2 targets=$3 ports=$4 s share pid ready line left
    local pids=()
    for s in $(seq 0 $((SWARMS - 1))); do
        share=$(( n / SWARMS + (s < n % SWARMS ? 1 : 0) ))
        "$bin/emostream-swarm" --subscribers "$targets" --viewers "$share" \
            --offset "$s" --seconds "$MEASURE_S" --connect-per-s 2500 \
            --out "$work/$tag.json.$s" >"$work/$tag.out.$s" 2>"$work/$tag.err.$s" &
        pids+=($!)
    done
    for _ in $(seq 1 600); do
        ready=$(cat "$work/$tag".err.* 2>/dev/null | grep -c '^ALL CONNECTED' || true)
        [[ $ready -ge $SWARMS ]] && break
        sleep 0.2
    done
    sleep 1
    rss1=$(rss_kib); slab1=$(slab_kib)
    tail -n 1 "$work/$tag.err.0" >&2
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    "$bin/emostream-swarm" merge "$work/$tag".json.* | tee "$work/$tag.md" >&2
    line=$(grep '^SWARM' "$work/$tag.md")
    field() { sed -E "s/.* $1=(-?[0-9]+).*/\1/" <<<" $line"; }
    connected=$(field connected) dropped=$(field dropped) missing=$(field missing) lagged=$(field lagged)
    p50_read=$(field p50_read_ms) p99_read=$(field p99_read_ms)
    p50_stamp=$(field p50_stamp_ms) p99_stamp=$(field p99_stamp_ms)
    # The next run starts once the servers have let go of this one's sockets (the floor notices
    # at its next write), so neither its cores nor the slab reading carry them.
    for _ in $(seq 1 300); do
        # shellcheck disable=SC2086 # one argument per port
        left=$(open_sockets $ports)
        [[ $left -eq 0 ]] && break
        sleep 0.2
    done
    [[ $left -eq 0 ]] || echo "$left sockets of the last run still open on ports $ports" >&2
}

# "min–max UNIT (median m)" of the numbers after the unit $1.
spread() {
    local unit=$1; shift
    printf '%s\n' "$@" | sort -n | awk -v u="$unit" '{ v[NR] = $1 } END {
        m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%g–%g %s (median %g)", v[1], v[NR], u, m }'
}
median() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
        printf "%g", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

runs="$work/runs.md"
results="$work/results.md"
printf '| viewers | run | server | connected | dropped | missing frames | lag notices | read p50 | read p99 | stamp p50 | stamp p99 | subscriber RSS / viewer | kernel slab / connection |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n' >"$runs"
printf '| viewers | runs | connected (fewest) | dropped + missing | read p99, broadcaster | read p99, floor | p99 / floor (medians) | stamp p99 (server-side fan-out), broadcaster | stamp p99, floor | read p50, broadcaster | subscriber RSS / viewer | kernel slab / connection | held |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n' >"$results"
best=0 best_p99=0 best_stamp=0 last_n=0 last_rss=0 last_slab=0 last_p99=0 last_floor_p99=0
sub_ports=$(grep -o ':[0-9]\+' <<<"$subscribers_csv" | tr -d : | xargs)
floor_ports=$(grep -o ':[0-9]\+' <<<"$floor_csv" | tr -d : | xargs)
# Baselines from before any viewer: memory a level frees stays in the subscribers' RSS (the
# allocator keeps it for reuse), so a per-level baseline would hide the next level's cost.
rss0=$(rss_kib); slab0=$(slab_kib)
for n in $LEVELS; do
    b_read=() f_read=() b_stamp=() f_stamp=() b_p50=() mem_rss=() mem_slab=()
    fewest=$n lost=0 clean=1
    for r in $(seq 1 "$RUNS"); do
        step "level $n viewers, run $r of $RUNS: the broadcaster ($SWARMS swarms over $SUBSCRIBERS subscribers, measuring $MEASURE_S s)"
        swarm "b-$n-$r" "$n" "$subscribers_csv" "$sub_ports"
        per_rss=$(awk -v a="$rss0" -v b="$rss1" -v n="$connected" 'BEGIN { printf "%.1f", n ? (b - a) / n : 0 }')
        per_slab=$(awk -v a="$slab0" -v b="$slab1" -v n="$connected" 'BEGIN { printf "%.1f", n ? (b - a) / n / 2 : 0 }')
        b_read+=("$p99_read") b_stamp+=("$p99_stamp") b_p50+=("$p50_read") mem_rss+=("$per_rss") mem_slab+=("$per_slab")
        (( connected < fewest )) && fewest=$connected
        lost=$(( lost + dropped + missing ))
        (( connected >= n && dropped == 0 && missing == 0 && p99_read >= 0 )) || clean=0
        printf '| %d | %d | broadcaster | %d | %d | %d | %d | %d ms | %d ms | %d ms | %d ms | %s KiB | %s KiB |\n' "$n" "$r" \
            "$connected" "$dropped" "$missing" "$lagged" "$p50_read" "$p99_read" "$p50_stamp" "$p99_stamp" \
            "$per_rss" "$per_slab" >>"$runs"
        step "level $n viewers, run $r of $RUNS: the floor ($SUBSCRIBERS emostream-fanout-floor processes, the same swarms)"
        swarm "f-$n-$r" "$n" "$floor_csv" "$floor_ports"
        f_read+=("$p99_read") f_stamp+=("$p99_stamp")
        printf '| %d | %d | floor | %d | %d | %d | %d | %d ms | %d ms | %d ms | %d ms | | |\n' "$n" "$r" \
            "$connected" "$dropped" "$missing" "$lagged" "$p50_read" "$p99_read" "$p50_stamp" "$p99_stamp" >>"$runs"
    done
    b_med=$(median "${b_read[@]}") f_med=$(median "${f_read[@]}")
    ratio=$(awk -v a="$b_med" -v b="$f_med" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    held=$(awk -v c="$clean" -v m="$b_med" -v l="$P99_LIMIT_MS" 'BEGIN { print (c && m <= l) ? 1 : 0 }')
    last_n=$n last_rss=$(median "${mem_rss[@]}") last_slab=$(median "${mem_slab[@]}")
    last_p99=$b_med last_floor_p99=$f_med
    printf '| %d | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$RUNS" \
        "$fewest" "$lost" "$(spread ms "${b_read[@]}")" "$(spread ms "${f_read[@]}")" "$ratio" \
        "$(spread ms "${b_stamp[@]}")" "$(spread ms "${f_stamp[@]}")" "$(spread ms "${b_p50[@]}")" \
        "$(spread KiB "${mem_rss[@]}")" "$(spread KiB "${mem_slab[@]}")" "$( ((held)) && echo yes || echo no)" >>"$results"
    if (( ! held )); then
        echo "level $n did not hold (fewest connected $fewest, dropped + missing $lost, median read p99 $b_med ms)" >&2
        [[ -n ${KEEP_GOING:-} ]] && continue
        break
    fi
    best=$n best_p99=$b_med best_stamp=$(median "${b_stamp[@]}")
done

step "every run, then per level"
cat "$runs"
echo
cat "$results"
echo
echo "read: frame end_ms → the viewer's read() of its last bytes returned (normal-priority swarms,"
echo "every frame of the mix). stamp: → the kernel's receive stamp on the viewer's socket, the"
echo "server-side fan-out time (on loopback the receive runs inside the server's send), not receipt."
echo "Spreads are min–max (median) over $RUNS runs, broadcaster and floor alternating."
echo "floor: the same swarms against bare single-threaded write loops of the same frames (no tiers, no pings)."
echo "subscriber RSS / viewer: growth of the subscribers' RSS since before the first level; kernel slab /"
echo "connection: growth of the kernel's slab memory, halved, as each viewer is two sockets on this machine."
echo "largest level held: $best viewers (target: >= 50000, <= 16 KiB per idle connection, read p99 <= ${P99_LIMIT_MS} ms)"

# The figures the capacity model (scripts/capacity.py) reads: the largest level held, and the
# memory per viewer of the last level measured (memory does not depend on how loaded the cores
# were). p99 figures are medians over the level's runs of the read p99.
results_dir=${RESULTS_DIR:-$PWD/.run/bench}
mkdir -p "$results_dir"
{ cat "$runs"; echo; cat "$results"; } >"$results_dir/fanout.md"
cat >"$results_dir/fanout.txt" <<RESULTS
# scripts/bench_fanout.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $SUBSCRIBERS subscribers, $RUNS runs per level, levels $LEVELS
machine_cores=$(nproc)
runs_per_level=$RUNS
held_viewers=$best
held_p99_ms=$best_p99
held_stamp_p99_ms=$best_stamp
p99_limit_ms=$P99_LIMIT_MS
last_level_viewers=$last_n
last_level_p99_ms=$last_p99
last_level_floor_p99_ms=$last_floor_p99
subscriber_rss_per_viewer_kib=$last_rss
kernel_per_viewer_kib=$last_slab
RESULTS
echo "tables: $results_dir/fanout.md; results for scripts/capacity.py: $results_dir/fanout.txt"
