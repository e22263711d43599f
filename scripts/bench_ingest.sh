#!/usr/bin/env bash
# Ingest benchmark (not a test): in one run on this machine
#   1. POST /send_emoji from 1,000 concurrent wrk connections (same wrk script, same bodies) against
#      four targets, each row a ratio to the first, with p50/p99 and the server's CPU-µs per
#      request — the decomposition of where a single tap's cost goes:
#        a. nginx `return 200`: the machine's ceiling for an HTTP answer;
#        b. bare axum (gateway/examples/bare_http.rs): the gateway's HTTP stack answering 200
#           after reading the body, and nothing else;
#        c. the gateway in fire-and-forget mode: 200 once the taps are queued for the producer;
#        d. the gateway in durable mode (the default): 200 only after acks=all from the broker;
#   2. POST /v1/streams/{stream}/emojis with 10,000-emoji batches: emojis per second *landed in
#      Kafka*, counted by reading the topic back (not from the replies), against the broker's own
#      ceiling measured right after: the same records produced straight to the broker with the
#      gateway's producer settings, all in flight (gateway/examples/produce_batches.rs).
#
# The broker is Nisshi 0.8.1 with the storage engine of STORAGE (sqlite, postgres or memory;
# default: postgres, as cluster.toml), named in the report.
#
#   STORAGE=memory scripts/bench_ingest.sh
#   scripts/bench_ingest.sh            # DURATION=10s CONNECTIONS=1000 BATCH_CONNECTIONS=16 by default
#   PROFILE=1 scripts/bench_ingest.sh  # also: perf profile of the gateway in each gateway phase
#
# Each single-tap row is decomposed too: per answered request, the CPU-µs of the server, of wrk
# (the load generator, on the same cores), of the broker, of anything else that ran, and the
# cores' idle time, adding up to cores × duration / requests; for the gateway rows its records
# per second and taps per record (from its /metrics).
#   SYSCALLS=1 scripts/bench_ingest.sh # also: the server's system calls per request (perf stat)
#
# Installs wrk and nginx with apt-get when missing. Everything runs on 127.0.0.1 and is stopped
# at exit. Every tap carries a random user id out of ten million (the real load is many phones
# each sending little), so the per-user token bucket stays in the path without tripping; the
# per-IP bucket is raised, since all of wrk's connections come from one address.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-1000}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-16}
THREADS=${THREADS:-2}

say() { printf '[bench] %s\n' "$*" >&2; }

need() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    local sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
need
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
# 1,000 connections on each side of loopback, plus the gateway's own files; 20,000 is the cap here.
ulimit -n 20000

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/emostream-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  EMOSTREAM_BIN_DIR="$root/target/release" scripts/broker.sh stop --data "$work/broker" --config "$work/cluster.toml" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say "building the gateway (release)"
cargo build --release --locked -p emostream-gateway --bin emostream-gateway \
  --example count_events --example produce_batches --example bare_http >&2
cargo build --release --locked -p emostream-protocol --bin emostream-config >&2
bin=$root/target/release

broker_port=$(free_port) gateway_port=$(free_port) nginx_port=$(free_port)
bare_port=$(free_port) ff_port=$(free_port)
cat >"$work/cluster.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$broker_port"
events_partitions = 4
[gateway]
listen = "127.0.0.1:$gateway_port"
ip_requests_per_s = 1000000000
ip_burst_requests = 1000000000
ip_taps_per_s = 1000000000
ip_burst_taps = 1000000000
[dataflow]
processes = ["127.0.0.1:2101"]
[broadcaster]
main = "127.0.0.1:9000"
clusters = []
TOML
if [[ -n ${STORAGE:-} ]]; then export EMOSTREAM_DEV_BROKER__STORAGE=$STORAGE; fi
storage=$("$bin/emostream-config" --config "$work/cluster.toml" dev-broker | awk '{print $3}')
EMOSTREAM_BIN_DIR="$bin" scripts/broker.sh start --port "$broker_port" --data "$work/broker" --config "$work/cluster.toml"

RUST_LOG=warn "$bin/emostream-gateway" --config "$work/cluster.toml" >"$work/gateway.log" 2>&1 &
pids+=($!)
durable_pid=$!
# The same gateway in fire-and-forget mode, on the same broker; idle while the others run.
EMOSTREAM_GATEWAY__ACK_MODE=fire_and_forget EMOSTREAM_GATEWAY__LISTEN="127.0.0.1:$ff_port" \
  RUST_LOG=warn "$bin/emostream-gateway" --config "$work/cluster.toml" >"$work/gateway-ff.log" 2>&1 &
pids+=($!)
ff_pid=$!
"$bin/examples/bare_http" --listen "127.0.0.1:$bare_port" >"$work/bare.log" 2>&1 &
pids+=($!)
bare_pid=$!

mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port reuseport;
    location / {
      default_type application/json;
      return 200 '{"status":"accepted","accepted":1,"epoch":0}';
    }
  }
}
CONF
"$nginx_bin" -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)

until curl -fsS "http://127.0.0.1:$gateway_port/readyz" >/dev/null 2>&1; do
  kill -0 "$durable_pid" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
  sleep 0.1
done
until curl -fsS "http://127.0.0.1:$ff_port/readyz" >/dev/null 2>&1; do
  kill -0 "$ff_pid" 2>/dev/null || { cat "$work/gateway-ff.log" >&2; exit 1; }
  sleep 0.1
done
until curl -sS -o /dev/null "http://127.0.0.1:$bare_port/" 2>/dev/null; do
  kill -0 "$bare_pid" 2>/dev/null || { cat "$work/bare.log" >&2; exit 1; }
  sleep 0.1
done
until curl -sS -o /dev/null "http://127.0.0.1:$nginx_port/" 2>/dev/null; do sleep 0.1; done

# One script for both targets: the same bodies, the same per-request Lua cost on wrk's side.
cat >"$work/single.lua" <<'LUA'
local emojis = {"🔥", "👍🏽", "❤️", "😂", "👨‍👩‍👧", "🇮🇳"}
local counter = 0
init = function(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
request = function()
  local body = string.format(
    '{"user_id":"user-%d","emoji_type":"%s","timestamp":"2024-11-05T10:00:00.000Z"}',
    math.random(1, 10000000), emojis[math.random(1, #emojis)])
  return wrk.format("POST", "/send_emoji", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
LUA

# Batches of 10,000 emojis; 100 distinct bodies cover a million distinct users, so no user's
# bucket (50 taps/s) runs dry at a million taps per second.
cat >"$work/batch.lua" <<'LUA'
local emojis = {"🔥", "👍🏽", "❤️", "😂", "👨‍👩‍👧", "🇮🇳"}
local bodies = {}
local n = 0
init = function(args)
  for b = 1, 100 do
    local items = {}
    for i = 1, 10000 do
      items[i] = string.format('{"user_id":"user-%d","emoji":"%s"}', b * 10000 + i, emojis[(i % #emojis) + 1])
    end
    bodies[b] = "[" .. table.concat(items, ",") .. "]"
  end
  n = math.random(1, 100)
end
request = function()
  n = n % 100 + 1
  return wrk.format("POST", "/v1/streams/bench-batch/emojis", {["Content-Type"] = "application/json"}, bodies[n])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
LUA

broker_pid=$(cat "$work/broker/broker.pid")
# utime + stime of a process, in clock ticks; for the broker, with its PostgreSQL server's
# processes (the postmaster and its children, whose command lines do not name the data folder).
cpu_ticks() {
  local procs=$1
  if [[ $1 == "$broker_pid" && -f $work/broker/pg/postmaster.pid ]]; then
    local postmaster; postmaster=$(head -1 "$work/broker/pg/postmaster.pid")
    procs="$1 $postmaster $(pgrep -P "$postmaster" | tr '\n' ' ')"
  fi
  local total=0 pid
  for pid in $(echo "$procs" | tr ' ' '\n' | sort -u); do
    [[ -r /proc/$pid/stat ]] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
# The whole machine, in clock ticks: "busy idle" (idle counts iowait). Busy minus the server,
# the broker and wrk is what else ran meanwhile (another build, say): it shows, not hides.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
tick=$(getconf CLK_TCK)
# The gateway's records acknowledged so far (its broker-ack histogram's count); 0 elsewhere.
records_acked() {
  [[ -n ${1:-} ]] || { echo 0; return; }
  curl -fsS "$1/metrics" | awk '$1 == "emostream_gateway_broker_ack_seconds_count" {print $2}'
}

# wrk's RESULT line: requests duration_us non2xx socket_errors p50_us p99_us. Each phase also
# writes $work/cpu.<name>: the CPU seconds of the server (server_pid, the process under load),
# the broker and wrk, the machine's busy and idle CPU seconds, and the records the gateway had
# acknowledged (metrics_url: the gateway under load, none for nginx and bare axum).
# SYSCALLS=1 adds the server's system calls (perf's raw_syscalls tracepoint: it slows each
# call a little, so it is off by default).
run_wrk() { # url script connections name [metrics_url]
  local g0 b0 m0 r0 perf_pid= sys_pid=
  g0=$(cpu_ticks "$server_pid") b0=$(cpu_ticks "$broker_pid") m0=$(machine_ticks) r0=$(records_acked "${5:-}")
  # perf takes several processes (nginx's) as a comma-separated list.
  local targets; targets=$(echo "$server_pid" | xargs | tr ' ' ,)
  if [[ -n ${PROFILE:-} ]]; then
    perf record -F 499 -g -p "$targets" -o "$work/perf.$4" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  if [[ -n ${SYSCALLS:-} ]]; then
    perf stat -x, -e raw_syscalls:sys_enter -p "$targets" \
      -o "$work/syscalls.$4" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
    sys_pid=$!
  fi
  # bash's `time` reports wrk's own user and system seconds (and tee's and awk's, next to nothing).
  local TIMEFORMAT='%U %S'
  { time wrk -t"$THREADS" -c"$3" -d"$DURATION" --timeout 10s -s "$2" "$1" | tee -a "$work/wrk.log" \
      | awk '/^RESULT/ {print $2, $3, $4, $5, $6, $7}' >"$work/wrk.$4"; } 2>"$work/wrk-time.$4"
  local g b m r
  g=$(( $(cpu_ticks "$server_pid") - g0 )) b=$(( $(cpu_ticks "$broker_pid") - b0 ))
  m=$(machine_ticks) r=$(( $(records_acked "${5:-}") - r0 ))
  # server_s broker_s wrk_s busy_s idle_s records
  local wu ws busy idle busy0 idle0
  read -r wu ws < <(tail -1 "$work/wrk-time.$4")
  read -r busy idle <<<"$m"
  read -r busy0 idle0 <<<"$m0"
  awk -v g="$g" -v b="$b" -v k="$tick" -v wu="$wu" -v ws="$ws" -v busy=$((busy - busy0)) -v idle=$((idle - idle0)) -v r="$r" \
    'BEGIN { printf "%.2f %.2f %.2f %.2f %.2f %d\n", g/k, b/k, wu + ws, busy/k, idle/k, r }' >"$work/cpu.$4"
  say "$4: server $(awk '{print $1}' "$work/cpu.$4") CPU s, broker $(awk '{print $2}' "$work/cpu.$4"), wrk $(awk '{print $3}' "$work/cpu.$4"); machine busy $(awk '{print $4}' "$work/cpu.$4"), idle $(awk '{print $5}' "$work/cpu.$4")"
  if [[ -n $sys_pid ]]; then
    wait "$sys_pid" || true
    awk -F, '/raw_syscalls/ {print $1}' "$work/syscalls.$4" >"$work/syscalls.$4.n"
  fi
  if [[ -n $perf_pid ]]; then
    wait "$perf_pid" || true
    say "perf: where the server's time goes ($4), self time by symbol"
    perf report -i "$work/perf.$4" --no-children --sort symbol --percent-limit 1.5 --stdio 2>/dev/null \
      | { grep -E '^ +[0-9]' || true; } | head -25 >&2
    say "perf: by shared object ($4)"
    perf report -i "$work/perf.$4" --no-children --sort dso --stdio 2>/dev/null | { grep -E '^ +[0-9]' || true; } | head -8 >&2
  fi
  cat "$work/wrk.$4"
}
rate() { awk -v r="$1" -v d="$2" -v bad="$3" 'BEGIN { printf "%.0f", (r - bad) / (d / 1e6) }'; }

nginx_pids() { echo "$(cat "$work/nginx/nginx.pid") $(pgrep -P "$(cat "$work/nginx/nginx.pid")" | tr '\n' ' ')"; }
say "nginx return 200: $CONNECTIONS connections, $DURATION"
server_pid=$(nginx_pids)
read -r n_req n_dur n_bad n_err n_p50 n_p99 < <(run_wrk "http://127.0.0.1:$nginx_port/send_emoji" "$work/single.lua" "$CONNECTIONS" nginx)
say "bare axum 200: $CONNECTIONS connections, $DURATION"
server_pid=$bare_pid
read -r a_req a_dur a_bad a_err a_p50 a_p99 < <(run_wrk "http://127.0.0.1:$bare_port/send_emoji" "$work/single.lua" "$CONNECTIONS" bare)
say "gateway POST /send_emoji (fire-and-forget): $CONNECTIONS connections, $DURATION"
server_pid=$ff_pid
read -r f_req f_dur f_bad f_err f_p50 f_p99 < <(run_wrk "http://127.0.0.1:$ff_port/send_emoji" "$work/single.lua" "$CONNECTIONS" ff "http://127.0.0.1:$ff_port")
say "gateway POST /send_emoji (durable): $CONNECTIONS connections, $DURATION"
server_pid=$durable_pid
read -r g_req g_dur g_bad g_err g_p50 g_p99 < <(run_wrk "http://127.0.0.1:$gateway_port/send_emoji" "$work/single.lua" "$CONNECTIONS" single "http://127.0.0.1:$gateway_port")

say "gateway POST /v1/streams/bench-batch/emojis, 10,000 emojis per request: $BATCH_CONNECTIONS connections, $DURATION"
read -r b_req _ b_bad b_err b_p50 b_p99 < <(run_wrk "http://127.0.0.1:$gateway_port/v1/streams/bench-batch/emojis" "$work/batch.lua" "$BATCH_CONNECTIONS" batch "http://127.0.0.1:$gateway_port")
# Every tap of the batch phase, counted in Kafka once every reply is in, over the span of the
# gateway receive times of its records (first to last record, plus the last one's flush).
read -r landed records first_ms last_ms < <("$bin/examples/count_events" --brokers "127.0.0.1:$broker_port" \
  --topic emoji-events --stream bench-batch)

# The broker's own ceiling for the same taps: as many as the gateway landed (at least a million),
# in 10,000-tap records produced straight to it, on a stream of their own.
say "bare produce of 10,000-tap records with the gateway's producer settings"
ceiling_records=$(( landed / 10000 > 100 ? landed / 10000 : 100 ))
read -r p_taps p_secs < <("$bin/examples/produce_batches" --config "$work/cluster.toml" \
  --stream bench-bare --records "$ceiling_records" --taps 10000)

nginx_rate=$(rate "$n_req" "$n_dur" "$n_bad")
gateway_rate=$(rate "$g_req" "$g_dur" "$g_bad")
# One row of the single-tap table: label requests duration non2xx errors p50 p99 name
row() {
  local r
  r=$(rate "$2" "$3" "$4")
  awk -v l="$1" -v r="$r" -v n="$nginx_rate" -v p50="$6" -v p99="$7" -v ok="$(( $2 - $4 ))" -v bad="$4" -v err="$5" \
    'BEGIN { printf "%-26s %9d  %5.2f  %8.1f  %8.1f  %8d  %d\n", l, r, r / n, p50 / 1e3, p99 / 1e3, bad, err }'
}
# Where a row's CPU went, per answered request, in CPU-µs: every microsecond of the machine's
# cores over the phase is in one column (the columns add up to cores × duration / requests);
# and the gateway's records per second and taps per record.
cost() { # label requests duration non2xx name
  local server broker wrk busy idle records
  read -r server broker wrk busy idle records <"$work/cpu.$5"
  local sys=-
  [[ -s $work/syscalls.$5.n ]] && sys=$(awk -v c="$(cat "$work/syscalls.$5.n")" -v ok="$(( $2 - $4 ))" 'BEGIN { printf "%.1f", c / ok }')
  awk -v l="$1" -v ok="$(( $2 - $4 ))" -v d="$3" -v s="$server" -v b="$broker" -v w="$wrk" -v busy="$busy" -v idle="$idle" \
    -v rec="$records" -v sys="$sys" -v cores="$(nproc)" \
    'BEGIN { u = 1e6 / ok; other = busy - s - b - w; if (other < 0) other = 0
      printf "%-26s %7.1f  %6.1f  %6.1f  %6.1f  %6.1f  %7.1f  %9s  %8s  %8s\n", l, s * u, w * u, b * u, other * u, idle * u,
        cores * d / ok, sys, rec ? sprintf("%.0f", rec / (d / 1e6)) : "-", rec ? sprintf("%.1f", ok / rec) : "-" }'
}
landed_rate=$(awk -v e="$landed" -v a="$first_ms" -v b="$last_ms" 'BEGIN { printf "%.0f", e / ((b - a + 100) / 1e3) }')
bare_rate=$(awk -v t="$p_taps" -v s="$p_secs" 'BEGIN { printf "%.0f", t / s }')
acked_batches=$((b_req - b_bad))
cat <<REPORT

== ingest benchmark ($(nproc) cores, $DURATION per run, wrk -t$THREADS; broker Nisshi 0.8.1, storage $storage) ==
single tap, POST /send_emoji, $CONNECTIONS connections (ratio: to nginx)
target                         req/s  ratio   p50 ms    p99 ms   non-2xx  socket errors
$(row "nginx return 200" "$n_req" "$n_dur" "$n_bad" "$n_err" "$n_p50" "$n_p99")
$(row "bare axum 200" "$a_req" "$a_dur" "$a_bad" "$a_err" "$a_p50" "$a_p99")
$(row "gateway fire-and-forget" "$f_req" "$f_dur" "$f_bad" "$f_err" "$f_p50" "$f_p99")
$(row "gateway durable" "$g_req" "$g_dur" "$g_bad" "$g_err" "$g_p50" "$g_p99")
ratio gateway (durable) / nginx: $(awk -v g="$gateway_rate" -v n="$nginx_rate" 'BEGIN { printf "%.2f", g / n }')
where each answered request's CPU-us went ($(nproc) cores; other: what else ran on the machine)
target                      server     wrk  broker   other    idle  = total  syscalls  records/s  taps/rec
$(cost "nginx return 200" "$n_req" "$n_dur" "$n_bad" nginx)
$(cost "bare axum 200" "$a_req" "$a_dur" "$a_bad" bare)
$(cost "gateway fire-and-forget" "$f_req" "$f_dur" "$f_bad" ff)
$(cost "gateway durable" "$g_req" "$g_dur" "$g_bad" single)
batch route, landed      : $landed_rate emojis/s in Kafka  ($landed emojis in $records records over $(( last_ms - first_ms + 100 )) ms of receive time; $acked_batches batches of 10,000 answered 202, non-2xx $b_bad, socket errors $b_err, p50 ${b_p50} us, p99 ${b_p99} us)
bare produce, same broker: $bare_rate emojis/s  ($p_taps taps in $p_secs s, every record acknowledged)
ratio landed / bare      : $(awk -v g="$landed_rate" -v n="$bare_rate" 'BEGIN { printf "%.2f", g / n }')
REPORT

# The figures the capacity model (scripts/capacity.py) reads: per-phase requests and the
# gateway's own CPU seconds, so it can work per core whatever else shared the machine.
results=${RESULTS_DIR:-$root/.run/bench}
mkdir -p "$results"
read -r single_cpu _ <"$work/cpu.single"
read -r batch_cpu _ <"$work/cpu.batch"
cat >"$results/ingest.txt" <<RESULTS
# scripts/bench_ingest.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, storage $storage, $DURATION per phase
single_requests_ok=$((g_req - g_bad))
single_requests_per_s=$gateway_rate
single_p99_us=$g_p99
single_gateway_cpu_s=$single_cpu
batch_emojis_landed=$landed
batch_emojis_per_s=$landed_rate
batch_gateway_cpu_s=$batch_cpu
RESULTS
say "results for scripts/capacity.py: $results/ingest.txt"
