#!/usr/bin/env bash
# Fan-out benchmark: how many concurrent viewers this machine holds, the memory each idle one costs
# (WebSocket and SSE), and p99 from the main publisher's emit to a viewer having the whole epoch at
# that load, each level measured RUNS times alternating with two floors (broadcaster, floor with one
# write per viewer, floor with four, broadcaster, ...).
#
#   scripts/bench_fanout.sh                          # levels 10000 25000 50000 60000, 5 runs each
#   LEVELS="50000 100000" scripts/bench_fanout.sh    # the levels given
#   LEVELS=2000 RUNS=2 MEASURE_S=6 SSE_VIEWERS=1000 scripts/bench_fanout.sh   # a smoke test of the script
#   KEEP_GOING=1 scripts/bench_fanout.sh             # run every level even after one fails
#   SSE_VIEWERS=0 …                                  # no SSE phase
#   BENCH_LOG=warn,emostream_broadcaster::fanout=debug KEEP_WORK=1 …  # keep the tiers' logs
#
# Topology: the main publisher with --synthetic-ms 2000 (every 2 s, stream "main"'s epoch frame of
# 30 emojis, its trending and sentiment frames and the popular frame, 2.8 KB in four messages, each
# with end_ms = the moment they are emitted, instead of reading Kafka), 2 cluster publishers,
# SUBSCRIBERS subscribers, and viewer-swarm processes (emostream-swarm) splitting each level's
# viewers evenly over the subscribers.
#
# Descriptors: every viewer is a socket in a subscriber and one in a swarm. The script raises the
# hard limit on open files to /proc/sys/fs/nr_open where it may (root with CAP_SYS_RESOURCE), and
# the tools raise their soft limit to the hard one. Where it may not (a container without that
# capability: the hard limit stays what the session was started with), a level is spread over
# enough swarm processes that each stays under the limit, and the script refuses to start if a
# subscriber would have to hold more viewers than its limit allows. Local ports: each viewer's
# connection is one (127.0.0.1:ephemeral, 127.0.0.1:server port) pair, and Linux shares an
# ephemeral port among connections to different server ports, so a level needs at most one
# ephemeral port range (net.ipv4.ip_local_port_range) of viewers per subscriber.
#
# What is timed, per viewer and epoch, from the epoch's end_ms (the moment main emitted it):
# - whole epoch read (the headline): the read() that returned the last bytes of the epoch's last
#   message (of the four) returned: when an ordinary client has everything about the epoch;
# - epoch frame read: the same for the epoch frame alone;
# - stamps: the kernel's receive stamp (SO_TIMESTAMPNS) of the same bytes, reported beside them as
#   the server-side fan-out time: on loopback the receiving stack runs inside the server's send, so
#   the stamp says when the server had handed the message over, not when a client had it.
# The swarms run at normal priority, as ordinary clients do, so they compete for the cores.
#
# The floors: SUBSCRIBERS emostream-fanout-floor processes per kind, writing the same frames at the
# same moments with nothing but writes from one thread, watched by the same swarms: "1 write" joins
# the epoch's four messages into one write per viewer (what a fan-out that groups an epoch can do
# at best; the ratio against it is the headline), "4 writes" writes each message separately (what
# one that sends each message as it comes can do at best). Each broadcaster run is followed by one
# of each floor, so all see the same machine.
#
# A level holds when in every broadcaster run every viewer connected and stayed, no message went
# missing, and the median over the runs of the whole-epoch read p99 is <= 400 ms; the spread
# (min-max, median) is reported for the broadcaster and both floors. The run stops at the first
# level that fails.
#
# Memory per connection, read while the viewers are connected and idle: the growth of the
# subscribers' summed RSS since before the first viewer, per viewer; plus the kernel's: the growth
# of its slab memory (sockets, their files, epoll entries) and of TCP buffer memory
# (/proc/net/sockstat), per viewer, halved, as each viewer is two sockets here. The SSE phase
# (SSE_VIEWERS viewers over GET /v1/streams/main/sse, against the broadcaster only: the floors speak
# WebSocket) runs last, on subscribers restarted for it, so its growth is measured from an empty
# start too.
set -euo pipefail
cd "$(dirname "$0")/.."

LEVELS=${LEVELS:-"10000 25000 50000 60000"}
SUBSCRIBERS=${SUBSCRIBERS:-6}
SWARMS=${SWARMS:-4}
MEASURE_S=${MEASURE_S:-20}
RUNS=${RUNS:-5}
SSE_VIEWERS=${SSE_VIEWERS:-10000}
BASE_PORT=${BASE_PORT:-19100}
P99_LIMIT_MS=400

# Descriptors: as many as the kernel allows per process, where this shell may raise the hard
# limit; otherwise the limit stays and the viewers are spread (see the header).
nr_open=$(cat /proc/sys/fs/nr_open)
if (( $(ulimit -Hn) < nr_open )) && ! ulimit -Hn "$nr_open" 2>/dev/null; then
    echo "note: cannot raise the hard limit on open files ($(ulimit -Hn)) to fs.nr_open ($nr_open):" \
        "no CAP_SYS_RESOURCE; viewers are spread over processes under $(ulimit -Hn) each" >&2
fi
ulimit -n "$(ulimit -Hn)"
# Viewers one process may hold: the broadcaster keeps 1024 descriptors for itself
# (BroadcasterConfig::RESERVED_DESCRIPTORS), the swarm a few for its own files.
per_process=$(( $(ulimit -n) - 1100 ))
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
ports_per_server=$(( port_hi - port_lo + 1 ))
largest=$(printf '%s\n' $LEVELS "$SSE_VIEWERS" | sort -n | tail -n 1)
per_sub=$(( (largest + SUBSCRIBERS - 1) / SUBSCRIBERS ))
if (( per_sub > per_process || per_sub > ports_per_server )); then
    echo "$largest viewers over $SUBSCRIBERS subscribers is $per_sub each: more than a process may hold" \
        "($per_process) or than one ephemeral port range serves ($ports_per_server); raise SUBSCRIBERS" >&2
    exit 1
fi

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
sub_names=()
for c in 0 1; do
    start "c$c" cluster --name "c$c"
    for i in $(seq 0 $((per_cluster - 1))); do
        if (( c * per_cluster + i < SUBSCRIBERS )); then
            sub_names+=("c$c-s$i")
            urls+=("ws://127.0.0.1:$((BASE_PORT + 10 * (c + 1) + i + 1))")
        fi
    done
done
start_subscribers() { # sets sub_pids
    local name
    sub_pids=()
    for name in "${sub_names[@]}"; do
        start "$name" subscriber --name "$name"
        sub_pids+=("$(cat "$work/$name.pid")")
    done
}
start_subscribers
subscribers_csv=$(IFS=,; echo "${urls[*]}")
# The yardsticks: for each kind of floor as many bare fan-out processes as subscribers, each writing
# the same frames to its viewers at the same moments from one thread (tools/src/bin/fanout_floor.rs):
# one write per viewer per epoch on ports +200.., four on ports +300...
start_floors() { # writes, first port; sets floor_csv
    local i urls=()
    for i in $(seq 0 $((SUBSCRIBERS - 1))); do
        "$bin/emostream-fanout-floor" --writes "$1" --listen "127.0.0.1:$(($2 + i))" >"$work/floor-$1-$i.log" 2>&1 &
        pids+=($!)
        urls+=("ws://127.0.0.1:$(($2 + i))")
    done
    floor_csv=$(IFS=,; echo "${urls[*]}")
}
start_floors one $((BASE_PORT + 200)); floor1_csv=$floor_csv
start_floors four $((BASE_PORT + 300)); floor4_csv=$floor_csv
# Subscribers the main publisher lists as live (linked to their cluster, so frames reach them).
live_subscribers() {
    curl -s "http://$main/v1/topology" | grep -o '"url"' | wc -l || true
}
wait_for_subscribers() {
    for _ in $(seq 1 100); do
        live=$(live_subscribers)
        [[ $live -ge $SUBSCRIBERS ]] && break
        sleep 0.1
    done
    [[ $live -ge $SUBSCRIBERS ]] || { echo "only $live of $SUBSCRIBERS subscribers came up" >&2; exit 1; }
}
wait_for_subscribers

rss_kib() { # sum of VmRSS over the subscribers
    local total=0 pid
    for pid in "${sub_pids[@]}"; do
        total=$(( total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status") ))
    done
    echo "$total"
}
kernel_kib() { # slab (sockets, their files, epoll entries) + TCP buffers (sockstat's pages)
    local page_kib=$(( $(getconf PAGESIZE) / 1024 ))
    echo $(( $(awk '/^Slab:/ {print $2}' /proc/meminfo) \
        + $(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat) * page_kib ))
}

# Sockets still open on the local ports given (the servers' side of viewer connections),
# listeners and TIME-WAIT aside.
open_sockets() {
    local filter="" port
    for port in "$@"; do filter+="${filter:+ or }sport = :$port"; done
    ss -Htn state connected exclude time-wait "( $filter )" | wc -l
}

# Runs swarm processes of $2 viewers in all against the comma-separated URLs $3, tagged $1, whose
# servers listen on the local ports "$4" (space-separated), with the swarm flags $5 (--sse or
# nothing); SWARMS processes, or more where one would hold more than per_process viewers. Sets
# connected, dropped, missing, lagged, epochs, p50_read, p99_read, p99_stamp (the whole epoch),
# p99_epoch_read, p99_epoch_stamp (the epoch frame), and per_rss/per_kernel/per_conn (KiB per
# viewer, read once all have connected, between epochs).
swarm() {
    local tag=$1 n=$2 targets=$3 ports=$4 flags=${5:-} s share pid ready line left rss1 kernel1
    local count=$(( (n + per_process - 1) / per_process ))
    (( count < SWARMS )) && count=$SWARMS
    local pids=()
    for s in $(seq 0 $((count - 1))); do
        share=$(( n / count + (s < n % count ? 1 : 0) ))
        # shellcheck disable=SC2086 # no flag or one
        "$bin/emostream-swarm" --subscribers "$targets" --viewers "$share" $flags \
            --offset "$s" --seconds "$MEASURE_S" --connect-per-s 2500 \
            --out "$work/$tag.json.$s" >"$work/$tag.out.$s" 2>"$work/$tag.err.$s" &
        pids+=($!)
    done
    for _ in $(seq 1 600); do
        ready=$(cat "$work/$tag".err.* 2>/dev/null | grep -c '^ALL CONNECTED' || true)
        [[ $ready -ge $count ]] && break
        sleep 0.2
    done
    sleep 1
    rss1=$(rss_kib); kernel1=$(kernel_kib)
    tail -n 1 "$work/$tag.err.0" >&2
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    "$bin/emostream-swarm" merge "$work/$tag".json.* | tee "$work/$tag.md" >&2
    line=$(grep '^SWARM' "$work/$tag.md")
    field() { sed -E "s/.* $1=(-?[0-9]+).*/\1/" <<<" $line"; }
    connected=$(field connected) dropped=$(field dropped) missing=$(field missing)
    lagged=$(field lagged) epochs=$(field epochs)
    p50_read=$(field p50_read_ms) p99_read=$(field p99_read_ms) p99_stamp=$(field p99_stamp_ms)
    p99_epoch_read=$(field p99_epoch_read_ms) p99_epoch_stamp=$(field p99_epoch_stamp_ms)
    per_kib() { awk -v a="$1" -v b="$2" -v n="$connected" -v d="$3" 'BEGIN { printf "%.1f", n ? (b - a) / n / d : 0 }'; }
    per_rss=$(per_kib "$rss0" "$rss1" 1) per_kernel=$(per_kib "$kernel0" "$kernel1" 2)
    per_conn=$(awk -v a="$per_rss" -v b="$per_kernel" 'BEGIN { printf "%.1f", a + b }')
    # The next run starts once the servers have let go of this one's sockets (a floor notices
    # at its next write), so neither its cores nor the memory reading carry them.
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
per_send() { awk -v p="$1" -v s="$2" 'BEGIN { printf "%.2f", p * 1000 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

runs="$work/runs.md"
results="$work/results.md"
sends="$work/sends.md"
sse="$work/sse.md"
printf '| viewers | run | server | connected | dropped | missing messages | lag notices | whole epochs | whole epoch read p50 | **whole epoch read p99** | whole epoch stamp p99 | epoch frame read p99 | epoch frame stamp p99 | subscriber RSS / viewer | kernel / connection | memory / connection |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n' >"$runs"
printf '| viewers | runs | connected (fewest) | dropped + missing | **whole epoch read p99, broadcaster** | floor, 1 write | floor, 4 writes | **÷ 1-write floor** | ÷ 4-write floor | epoch frame read p99, broadcaster | whole epoch stamp p99, broadcaster | subscriber RSS / viewer | kernel / connection | memory / connection | held |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n' >"$results"
printf '| viewers | floor | sends per viewer-epoch | whole epoch read p99 (median) | ÷ sends (µs per send) |\n|---|---|---|---|---|\n' >"$sends"
printf '| SSE viewers | connected | dropped | missing messages | whole epochs | whole epoch read p50 | **whole epoch read p99** | whole epoch stamp p99 | epoch frame read p99 | subscriber RSS / viewer | kernel / connection | **memory / connection** |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n' >"$sse"
best=0 best_p99=0 best_stamp=0 last_n=0 last_rss=0 last_kernel=0 last_p99=0 last_floor1=0 last_floor4=0
sse_conn=0 sse_p99=0
sub_ports=$(grep -o ':[0-9]\+' <<<"$subscribers_csv" | tr -d : | xargs)
floor1_ports=$(grep -o ':[0-9]\+' <<<"$floor1_csv" | tr -d : | xargs)
floor4_ports=$(grep -o ':[0-9]\+' <<<"$floor4_csv" | tr -d : | xargs)
# Baselines from before any viewer: memory a level frees stays in the subscribers' RSS (the
# allocator keeps it for reuse), so a per-level baseline would hide the next level's cost.
rss0=$(rss_kib); kernel0=$(kernel_kib)

row() { # viewers, run, server: one row of $runs from what swarm set
    printf '| %d | %s | %s | %d | %d | %d | %d | %d | %d ms | %d ms | %d ms | %d ms | %d ms | %s | %s | %s |\n' "$1" "$2" "$3" \
        "$connected" "$dropped" "$missing" "$lagged" "$epochs" "$p50_read" "$p99_read" "$p99_stamp" \
        "$p99_epoch_read" "$p99_epoch_stamp" "$4" "$5" "$6"
}

for n in $LEVELS; do
    b_read=() f1_read=() f4_read=() b_stamp=() b_epoch=() mem_rss=() mem_kernel=() mem_conn=()
    fewest=$n lost=0 clean=1
    for r in $(seq 1 "$RUNS"); do
        step "level $n viewers, run $r of $RUNS: the broadcaster ($SUBSCRIBERS subscribers, measuring $MEASURE_S s)"
        swarm "b-$n-$r" "$n" "$subscribers_csv" "$sub_ports"
        b_read+=("$p99_read") b_stamp+=("$p99_stamp") b_epoch+=("$p99_epoch_read")
        mem_rss+=("$per_rss") mem_kernel+=("$per_kernel") mem_conn+=("$per_conn")
        (( connected < fewest )) && fewest=$connected
        lost=$(( lost + dropped + missing ))
        (( connected >= n && dropped == 0 && missing == 0 && p99_read >= 0 )) || clean=0
        row "$n" "$r" broadcaster "$per_rss KiB" "$per_kernel KiB" "$per_conn KiB" >>"$runs"
        step "level $n viewers, run $r of $RUNS: the floor, 1 write per viewer-epoch"
        swarm "f1-$n-$r" "$n" "$floor1_csv" "$floor1_ports"
        f1_read+=("$p99_read")
        row "$n" "$r" "floor, 1 write" "" "" "" >>"$runs"
        step "level $n viewers, run $r of $RUNS: the floor, 4 writes per viewer-epoch"
        swarm "f4-$n-$r" "$n" "$floor4_csv" "$floor4_ports"
        f4_read+=("$p99_read")
        row "$n" "$r" "floor, 4 writes" "" "" "" >>"$runs"
        printf 'run %d: whole epoch read p99 %d ms, ÷ 1-write floor (%d ms) %s, ÷ 4-write floor (%d ms) %s\n' "$r" \
            "${b_read[-1]}" "${f1_read[-1]}" "$(ratio "${b_read[-1]}" "${f1_read[-1]}")" \
            "${f4_read[-1]}" "$(ratio "${b_read[-1]}" "${f4_read[-1]}")" >&2
    done
    b_med=$(median "${b_read[@]}") f1_med=$(median "${f1_read[@]}") f4_med=$(median "${f4_read[@]}")
    held=$(awk -v c="$clean" -v m="$b_med" -v l="$P99_LIMIT_MS" 'BEGIN { print (c && m <= l) ? 1 : 0 }')
    last_n=$n last_rss=$(median "${mem_rss[@]}") last_kernel=$(median "${mem_kernel[@]}")
    last_p99=$b_med last_floor1=$f1_med last_floor4=$f4_med
    printf '| %d | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$RUNS" \
        "$fewest" "$lost" "$(spread ms "${b_read[@]}")" "$(spread ms "${f1_read[@]}")" \
        "$(spread ms "${f4_read[@]}")" "$(ratio "$b_med" "$f1_med")" "$(ratio "$b_med" "$f4_med")" \
        "$(spread ms "${b_epoch[@]}")" "$(spread ms "${b_stamp[@]}")" "$(spread KiB "${mem_rss[@]}")" \
        "$(spread KiB "${mem_kernel[@]}")" "$(spread KiB "${mem_conn[@]}")" "$( ((held)) && echo yes || echo no)" >>"$results"
    # The floors' p99 per send: what one more send per viewer and epoch costs here.
    printf '| %d | 1 write | 1 | %g ms | %s µs |\n| %d | 4 writes | 4 | %g ms | %s µs |\n' \
        "$n" "$f1_med" "$(per_send "$f1_med" "$n")" "$n" "$f4_med" "$(per_send "$f4_med" $((4 * n)))" >>"$sends"
    if (( ! held )); then
        echo "level $n did not hold (fewest connected $fewest, dropped + missing $lost, median whole-epoch read p99 $b_med ms)" >&2
        [[ -n ${KEEP_GOING:-} ]] && continue
        break
    fi
    best=$n best_p99=$b_med best_stamp=$(median "${b_stamp[@]}")
done

# SSE last, on subscribers started afresh: memory the WebSocket levels freed stays in the
# subscribers' allocators, and would be reused by (and hide) the SSE viewers' cost; measured first,
# SSE's leftovers inflated the WebSocket figures instead.
if (( SSE_VIEWERS > 0 )); then
    step "SSE: restarting the subscribers, then $SSE_VIEWERS viewers over GET /v1/streams/main/sse (measuring $MEASURE_S s)"
    for pid in "${sub_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${sub_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        (( $(live_subscribers) == 0 )) && break
        sleep 0.1
    done
    start_subscribers
    wait_for_subscribers
    # An epoch first, so that the baseline holds what every subscriber allocates for its first
    # frames (the hub's ring), as the first baseline did.
    sleep 2
    rss0=$(rss_kib); kernel0=$(kernel_kib)
    swarm "sse-$SSE_VIEWERS" "$SSE_VIEWERS" "$subscribers_csv" "$sub_ports" --sse
    sse_conn=$per_conn sse_p99=$p99_read
    printf '| %d | %d | %d | %d | %d | %d ms | %d ms | %d ms | %d ms | %s KiB | %s KiB | %s KiB |\n' "$SSE_VIEWERS" \
        "$connected" "$dropped" "$missing" "$epochs" "$p50_read" "$p99_read" "$p99_stamp" "$p99_epoch_read" \
        "$per_rss" "$per_kernel" "$per_conn" >>"$sse"
    row "$SSE_VIEWERS" 1 "broadcaster, SSE" "$per_rss KiB" "$per_kernel KiB" "$per_conn KiB" >>"$runs"
fi

step "every run, then per level"
legend() {
    cat <<LEGEND
whole epoch read (the headline): epoch end_ms → the viewer's read() of the last bytes of the epoch's
last message (of four) returned; epoch frame read: the same for the epoch frame alone. stamp: → the
kernel's receive stamp of the same bytes, the server-side fan-out time (on loopback the receive runs
inside the server's send), not receipt. Normal-priority swarms, every viewer, every epoch.
Spreads are min–max (median) over $RUNS runs, broadcaster and the two floors alternating.
floor, 1 write / 4 writes: the same swarms against bare single-threaded write loops of the same
frames (no tiers, no pings), the epoch's four messages joined in one write per viewer, or one write each.
memory / connection = subscriber RSS / viewer (growth since before any viewer) + kernel / connection
(growth of slab and TCP buffer memory, halved, as each viewer is two sockets on this machine).
open files per process: $(ulimit -n) (hard $(ulimit -Hn), fs.nr_open $nr_open); ephemeral ports $port_lo–$port_hi.
LEGEND
}
{
    cat "$runs"; echo; cat "$results"; echo; cat "$sends"; echo
    (( SSE_VIEWERS > 0 )) && { cat "$sse"; echo; }
    legend
} >&2
echo "largest level held: $best viewers (target: >= 50000; <= 12 KiB per WebSocket connection, <= 16 KiB per SSE one; whole epoch read p99 <= ${P99_LIMIT_MS} ms and <= 1.15 x the 1-write floor)" >&2

# The figures the capacity model (scripts/capacity.py) reads: the largest level held, and the
# memory per viewer of the last level measured (memory does not depend on how loaded the cores
# were). p99 figures are medians over the level's runs of the whole-epoch read p99.
results_dir=${RESULTS_DIR:-$PWD/.run/bench}
mkdir -p "$results_dir"
{
    cat "$runs"; echo; cat "$results"; echo; cat "$sends"; echo
    (( SSE_VIEWERS > 0 )) && { cat "$sse"; echo; }
    legend
} >"$results_dir/fanout.md"
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
last_level_floor_p99_ms=$last_floor1
last_level_floor4_p99_ms=$last_floor4
subscriber_rss_per_viewer_kib=$last_rss
kernel_per_viewer_kib=$last_kernel
sse_viewers=$SSE_VIEWERS
sse_per_viewer_kib=$sse_conn
sse_p99_ms=$sse_p99
RESULTS
echo "tables: $results_dir/fanout.md; results for scripts/capacity.py: $results_dir/fanout.txt"
