#!/usr/bin/env bash
# Checks scripts/up.sh's failure and stop paths without building anything: the release binaries
# are stand-ins (scripts/test_up_stub.py) that listen where the real tiers would, except the
# workers' supervisor and broker.sh's emostream-dev-broker, the debug build's own (test.sh builds
# them first), and up.sh runs from a copy of scripts/ in a temporary folder, so its .run/ is that folder's and its ports
# (17000-17102, the broker 17092 and its PostgreSQL 7092) are not the local system's.
#   1. a tier that fails at start: up.sh exits 1 naming the tier and its log;
#   2. a tier that dies while running: the same;
#   3. Ctrl-C (SIGINT to the whole process group) while the output pipe's reader is already gone;
#   4. SIGTERM to up.sh alone;
#   5. `up.sh 2>&1 | tee` and Ctrl-C to both, with the real development broker and its PostgreSQL
#      (scripts/broker.sh; installed once per machine when missing, as up.sh does), which must
#      both be stopped whichever of tee and up.sh's stop goes first.
# After each, no process that up.sh started is left. Cases 1-4 run with -k (no broker) and take
# about 10 s; case 5 about 10 s more.
set -euo pipefail
# The stand-ins read TOML with Python's tomllib (3.11 and later: Debian 12's python3).
if ! command -v python3 >/dev/null; then
  if ((EUID == 0)); then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq python3 >/dev/null
fi
python3 -c 'import tomllib' 2>/dev/null || { echo "test_up.sh needs Python 3.11 or later (tomllib)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/emostream-test-up.XXXXXX")
# The pids of processes with the temporary folder on their command line: up.sh and what it started.
leftovers() {
  local f
  for f in /proc/[0-9]*/cmdline; do
    grep -qF "$tmp/" "$f" 2>/dev/null && { f=${f#/proc/}; echo "${f%/cmdline}"; }
  done
  true
}
cleanup() { local pid; for pid in $(leftovers); do kill -KILL "$pid" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir -p "$tmp/root/scripts" "$tmp/bin"
cp "$here/up.sh" "$here/run_workers.sh" "$here/broker.sh" "$tmp/root/scripts/"
for tier in config gateway dataflow broadcaster; do ln -s "$here/test_up_stub.py" "$tmp/bin/emostream-$tier"; done
for tool in emostream-supervisor emostream-dev-broker; do
  [[ -x $here/../target/debug/$tool ]] || { echo "no target/debug/$tool: cargo build --workspace --bins first" >&2; exit 1; }
  ln -s "$here/../target/debug/$tool" "$tmp/bin/$tool"
done
cat >"$tmp/cluster.toml" <<'TOML'
[kafka]
brokers = "127.0.0.1:17092"
[gateway]
listen = "127.0.0.1:17080"
[dataflow]
processes = ["127.0.0.1:17101", "127.0.0.1:17102"]
[broadcaster]
main = "127.0.0.1:17000"
[[broadcaster.clusters]]
name = "c0"
listen = "127.0.0.1:17010"
subscribers = ["127.0.0.1:17011", "127.0.0.1:17012"]
[[broadcaster.clusters]]
name = "c1"
listen = "127.0.0.1:17020"
subscribers = ["127.0.0.1:17021"]
TOML
logs="$tmp/root/.run/logs"
# env execs up.sh, so $! of a background `"${up[@]}" &` is up.sh's own pid.
with_broker=(env EMOSTREAM_BIN_DIR="$tmp/bin" "$tmp/root/scripts/up.sh" -c "$tmp/cluster.toml")
up=("${with_broker[@]}" -k)

failed=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; failed=1; fi; }
nothing_left() {
  local pid left; left=$(leftovers)
  for pid in $left; do echo "left running: $pid $(tr '\0' ' ' <"/proc/$pid/cmdline")"; done
  [[ -z $left ]]
}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
until_up() { local deadline=$((SECONDS + 20)); until answers 17021; do ((SECONDS < deadline)) || return 1; sleep 0.1; done; sleep 0.5; }

echo "1. the gateway fails at start"
status=0; STUB_FAIL=gateway "${up[@]}" >"$tmp/out1" 2>&1 || status=$?
check "exit status 1 (got $status)" '((status == 1))'
check "names the tier and its log" 'grep -q "gateway (pid [0-9]*) exited with status 1" "$tmp/out1" && grep -qF "$logs/gateway.log" "$tmp/out1"'
check "nothing left running" nothing_left

echo "2. subscriber c1-s0 dies a second after it started"
status=0; STUB_DIE=c1-s0 "${up[@]}" >"$tmp/out2" 2>&1 || status=$?
check "exit status 1 (got $status)" '((status == 1))'
check "names the tier and its log" 'grep -q "c1-s0 (pid [0-9]*) exited with status 7" "$tmp/out2" && grep -qF "$logs/c1-s0.log" "$tmp/out2"'
check "nothing left running" nothing_left

# Ctrl-C as a terminal sends it, to the whole foreground job, whose output pipe's reader (head,
# like tee) has already gone: setsid gives up.sh a process group of its own; env resets SIGINT,
# which a background job starts with ignored (and bash cannot trap a signal ignored on entry).
ctrl_c_into_closed_pipe() {
  rm -f "$tmp/pipe" "$logs/up.log"
  mkfifo "$tmp/pipe"
  setsid env --default-signal=INT "$@" >"$tmp/pipe" 2>&1 </dev/null & group=$!
  head -n 1 <"$tmp/pipe" >/dev/null
  check "came up" until_up
  kill -INT -- "-$group"
  status=0; wait "$group" || status=$?
  check "exit status 0 (got $status)" '((status == 0))'
  check "its messages went on in up.log" 'grep -q "stopping" "$logs/up.log"'
  check "nothing left running" nothing_left
}

echo "3. Ctrl-C after the output pipe's reader is gone (up.sh | head -1)"
ctrl_c_into_closed_pipe "${up[@]}"

echo "4. SIGTERM to up.sh alone"
"${up[@]}" >"$tmp/out4" 2>&1 & pid=$!
check "came up" until_up
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
check "exit status 0 (got $status)" '((status == 0))'
check "stopped every tier" 'grep -q "stopped gateway" "$tmp/out4" && grep -q "stopped workers" "$tmp/out4"'
check "nothing left running" nothing_left

echo "5. with the development broker and its PostgreSQL: up.sh 2>&1 | tee, then Ctrl-C (the report of issue 24)"
rm -f "$logs/up.log"
setsid env --default-signal=INT bash -c '"$@" 2>&1 | tee "$0" >/dev/null' "$tmp/tee.log" "${with_broker[@]}" </dev/null & group=$!
check "came up" until_up
kill -INT -- "-$group"
status=0; wait "$group" || status=$?
check "the pipeline's exit status is 0 (tee's, got $status)" '((status == 0 || status == 130))'
check "nothing left running" nothing_left
check "the broker stopped (port 17092)" '! answers 17092'
check "PostgreSQL stopped (port 7092)" '! answers 7092'
check "broker.sh said it stopped PostgreSQL (into tee or up.log)" 'cat "$tmp/tee.log" "$logs/up.log" 2>/dev/null | grep -q "PostgreSQL stopped"'

exit "$failed"
