#!/usr/bin/env bash
# The Kafka-protocol broker for development, tests and the local run: Nisshi 0.8.1, on the address
# and with the storage engine that cluster.toml's [dev_broker] names. Nisshi is installed once
# into a per-user cache outside the clone (${EMOSTREAM_CACHE:-~/.cache/emostream}), so a fresh
# clone (CI included) reuses it. Nisshi 0.8 needs rustc 1.96 or later, so it is built with the
# nightly toolchain; the first build takes about 18 minutes on 2 cores.
#
#   scripts/broker.sh install       # build Nisshi once (~18 min on 2 cores); a no-op once built
#   scripts/broker.sh start [--port P] [--data DIR] [--config cluster.toml] [--storage ENGINE]
#                           [--cert PEM --key PEM]
#                                   # start in the background, wait until it answers, create the
#                                   # topics and check that the broker lists them
#   scripts/broker.sh stop  [--data DIR]  # SIGTERM, SIGKILL after 7 s; then stop its PostgreSQL
#   scripts/broker.sh kill  [--data DIR]  # SIGKILL the broker only (crash tests); start resumes
#   scripts/broker.sh path                # print the nisshi binary's path
#
# --port P overrides the port of both the listen and the advertised address (their hosts stay as
# configured); --data DIR (default .run/broker) holds everything the broker keeps: broker.pid,
# broker.log, and the storage. --storage overrides the configured engine:
#   sqlite    $DIR/nisshi.db (the broker runs inside DIR; the URL is relative)
#   postgres  a private PostgreSQL server (Debian's postgresql package, installed when missing)
#             with its cluster in $DIR/pg and its log in $DIR/postgres.log, listening on
#             127.0.0.1 only, on the broker's port - 10000 (+ 10000 below 11024, or the next
#             free port); stop stops it
#             too, kill leaves it running
#   memory    nothing survives a stop
# stop then start on the same DIR resumes with the same topics and records with postgres; sqlite
# keeps its file, but Nisshi 0.8.1 then reports the log start at the log end (records unreadable).
# --cert/--key make the listener TLS-only. Nisshi's own command-line client speaks plaintext, so
# the script then leaves creating the topics to a Kafka client of the caller's (an admin client
# with the same TLS settings).
#
# The addresses, the engine and the topics come from the project's own reader of the
# configuration, emostream-config (cluster.toml plus the EMOSTREAM_* environment overrides, the
# same as the Rust tiers), built into the repo's target dir when needed; EMOSTREAM_CONFIG_BIN
# names an already built one instead, and so does EMOSTREAM_BIN_DIR (the folder of the release
# binaries, as up.sh and the benchmarks set it) when it holds one.
set -euo pipefail

NISSHI_VERSION=0.8.1
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${EMOSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emostream}"
prefix="$cache/nisshi-$NISSHI_VERSION"
nisshi="$prefix/bin/nisshi"

# A message that cannot be written (its reader gone: `up.sh | tee` after Ctrl-C) must not stop the
# script half-way, least of all stop before PostgreSQL is stopped.
say() { printf '[broker] %s\n' "$*" >&2 2>/dev/null || true; }
die() { say "$*"; exit 1; }

install() {
  if [[ -x $nisshi ]]; then return; fi
  mkdir -p "$cache"
  # Two callers (say, two test binaries) must not build at once: the second waits for the first
  # and then finds the binary.
  local lock
  exec {lock}>"$cache/install.lock"
  if ! flock -n "$lock"; then
    say "another install of Nisshi is under way (lock $cache/install.lock); waiting for it"
    flock "$lock"
  fi
  if [[ -x $nisshi ]]; then exec {lock}>&-; return; fi
  if ! grep -q '^nightly' <<<"$(rustup toolchain list)"; then
    say "Nisshi $NISSHI_VERSION needs rustc >= 1.96: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
  fi
  say "installing Nisshi $NISSHI_VERSION into $prefix (once per machine; about 18 minutes on 2 cores)"
  # A private target dir keeps the build out of the clone; --locked pins Nisshi's own lock file.
  # The default features give the sqlite (libsql), postgres and memory (dynostore) engines.
  CARGO_TARGET_DIR="$cache/nisshi-build" cargo +nightly install --locked --root "$prefix" \
    nisshi --version "$NISSHI_VERSION"
  rm -rf "$cache/nisshi-build"
  exec {lock}>&-
  say "installed $nisshi"
}

port="" data="$root/.run/broker" config="$root/cluster.toml" storage="" cert="" key=""
parse_flags() {
  while [[ $# -gt 0 ]]; do
    case $1 in
      --port) port=$2; shift 2 ;;
      --data) data=$2; shift 2 ;;
      --config) config=$2; shift 2 ;;
      --storage) storage=$2; shift 2 ;;
      --cert) cert=$(realpath "$2"); shift 2 ;;
      --key) key=$(realpath "$2"); shift 2 ;;
      *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
  done
  set_data
}
# Absolute, because the broker runs inside it.
set_data() {
  if [[ -d $data ]]; then data=$(cd "$data" && pwd); fi
  pidfile="$data/broker.pid" log="$data/broker.log"
}

# The configuration as the Rust tiers read it: `topics` prints "name partitions [key=value…]" per topic,
# `dev-broker` prints "listen advertised storage".
config_bin=""
emostream_config() {
  if [[ -z $config_bin ]]; then
    if [[ -n ${EMOSTREAM_CONFIG_BIN:-} ]]; then
      config_bin=$EMOSTREAM_CONFIG_BIN
    elif [[ -n ${EMOSTREAM_BIN_DIR:-} && -x $EMOSTREAM_BIN_DIR/emostream-config ]]; then
      config_bin=$EMOSTREAM_BIN_DIR/emostream-config
    else
      # A no-op when the binary is fresh.
      (cd "$root" && cargo build --quiet --locked -p emostream-protocol --bin emostream-config) \
        || die "could not build emostream-config (cargo build -p emostream-protocol --bin emostream-config)"
      local target=${CARGO_TARGET_DIR:-target}
      [[ $target == /* ]] || target="$root/$target"
      config_bin="$target/debug/emostream-config"
    fi
  fi
  "$config_bin" --config "$config" "$@" || die "emostream-config --config $config $* failed"
}

# host:port -> host, port; an IPv6 host keeps its brackets.
host_of() { echo "${1%:*}"; }
port_of() { echo "${1##*:}"; }
# The address to connect to a listener bound to HOST.
connect_host() {
  case $1 in
    0.0.0.0 | "[::]" | "") echo 127.0.0.1 ;;
    *) echo "$1" ;;
  esac
}
# Whether something accepts connections on HOST PORT.
answers() { local host=${1#[}; host=${host%]}; (exec 3<>"/dev/tcp/$host/$2") 2>/dev/null; }

# Whether PID is a live process, not a zombie. The broker outlives this script, and whatever
# inherits it may reap it late (or never, in a container): a zombie counts as gone.
exists() {
  local pid=$1 stat
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}
# Whether PID is a live nisshi process (not a process that reused a stale pid file's pid).
alive() {
  local argv0
  exists "$1" && IFS= read -r -d '' argv0 <"/proc/$1/cmdline" 2>/dev/null && [[ $argv0 == *nisshi ]]
}
running_pid() { [[ -f $pidfile ]] && alive "$(<"$pidfile")" && cat "$pidfile"; }
# Waits up to SECONDS (an integer) for PID, known to be the broker, to be gone; fails if it is
# still there. It asks `exists`, not `alive`: a dying process loses its command line (the kernel
# releases its memory first) while it still closes its files and sockets, and only then becomes
# a zombie — callers rely on the port and the storage being free once this returns.
now_us() { echo "${EPOCHREALTIME//[.,]/}"; }
wait_gone() {
  local pid=$1 deadline=$(($(now_us) + $2 * 1000000))
  while exists "$pid"; do
    (($(now_us) < deadline)) || return 1
    sleep 0.02
  done
}

# --- PostgreSQL, for the postgres engine ----------------------------------------------------------

pg_bin=""
find_postgres() {
  pg_bin=$({ find /usr/lib/postgresql -path '*/bin/initdb' 2>/dev/null || true; } | sort -V | tail -1)
  pg_bin=${pg_bin%/initdb}
}
# initdb and pg_ctl refuse to run as root; root runs them as the postgres system user.
as_pg() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_ctl_() { as_pg "$pg_bin/pg_ctl" -D "$data/pg" "$@"; }
pg_running() {
  [[ -n $pg_bin && -f $data/pg/PG_VERSION ]] || return 1
  local pidfile_pg="$data/pg/postmaster.pid" postmaster
  if [[ -f $pidfile_pg ]]; then
    # A killed postmaster leaves its pid file, and where nothing reaps orphans (a container whose
    # init does not) its pid stays a zombie, which PostgreSQL takes for a live server.
    postmaster=$(head -1 "$pidfile_pg")
    if ! exists "$postmaster"; then rm -f "$pidfile_pg"; return 1; fi
  fi
  pg_ctl_ status >/dev/null 2>&1
}

install_postgres() {
  find_postgres
  [[ -n $pg_bin ]] && return
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  say "installing PostgreSQL (apt-get install postgresql)"
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >&2
  find_postgres
  [[ -n $pg_bin ]] || die "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb"
}

# The postgres user must be able to reach $data/pg: give o+x to the directories on the way that
# refuse it (a test's temporary directory is 0700).
let_postgres_in() {
  runuser -u postgres -- test -x "$data" && return
  local dir="" part parts opened=()
  IFS=/ read -ra parts <<<"${data#/}"
  for part in "${parts[@]}"; do
    dir="$dir/$part"
    if ! runuser -u postgres -- test -x "$dir"; then chmod o+x "$dir"; opened+=("$dir"); fi
  done
  say "allowed the postgres user to traverse ${opened[*]}"
}

# Starts the PostgreSQL server of $data/pg (creating the cluster and the nisshi database the first
# time) unless it is running, and sets pg_port.
pg_port="" pg_started=""
pg_start() {
  install_postgres
  local pgdata="$data/pg" pglog="$data/postgres.log"
  if ((EUID == 0)); then let_postgres_in; fi
  if [[ ! -f $pgdata/PG_VERSION ]]; then
    say "creating a PostgreSQL cluster in $pgdata"
    rm -rf "$pgdata"
    mkdir -m 700 "$pgdata"
    local pwfile="$data/.pgpass-init"
    (umask 077 && echo postgres >"$pwfile")
    if ((EUID == 0)); then chown postgres: "$pgdata" "$pwfile"; fi
    as_pg "$pg_bin/initdb" -D "$pgdata" -U postgres --pwfile="$pwfile" -E UTF8 --locale=C \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 >>"$pglog" 2>&1 \
      || { rm -f "$pwfile"; die "initdb failed; see $pglog"; }
    rm -f "$pwfile"
    # fsync=on keeps the database consistent when the broker process (or PostgreSQL) crashes,
    # which is what the restart tests exercise. synchronous_commit=off lets a commit return once
    # its WAL record is in the WAL buffer, not on disk, and the broker acknowledges a produce after
    # its commit: a crash of the machine (not of a process) can lose the last few hundred ms of
    # acknowledged records, never the database's consistency.
    cat >>"$pgdata/postgresql.conf" <<'EOF'

# scripts/broker.sh: a private server for the development broker.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = on
synchronous_commit = off
EOF
  fi
  touch "$pglog"
  if ((EUID == 0)); then chown postgres: "$pglog"; fi
  if pg_running; then
    pg_port=$(sed -n 4p "$pgdata/postmaster.pid")
    say "PostgreSQL already running on 127.0.0.1:$pg_port"
  else
    # 10000 below the broker's port (above it for ports under 11024), so that with the tests'
    # ports, which stay below the kernel's ephemeral range, it stays out of that range too: a port
    # in it may be held by an outgoing connection that no `answers` probe sees.
    pg_port=$((broker_port - 10000))
    ((pg_port >= 1024)) || pg_port=$((broker_port + 10000))
    local tries=0
    while answers 127.0.0.1 "$pg_port"; do
      ((++tries < 100)) || die "no free port for PostgreSQL near $((pg_port - tries))"
      pg_port=$((pg_port + 1))
    done
    pg_ctl_ start -w -t 60 -l "$pglog" -o "-p $pg_port" >/dev/null \
      || { tail -20 "$pglog" >&2; die "PostgreSQL did not start; see $pglog"; }
    pg_started=1
  fi
  export PGPASSWORD=postgres
  local psql=("$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -tA)
  if [[ $("${psql[@]}" -c "select 1 from pg_database where datname = 'nisshi'") != 1 ]]; then
    "${psql[@]}" -c "create database nisshi" >/dev/null || die "could not create database nisshi"
  fi
}

pg_stop() {
  find_postgres
  if pg_running; then
    pg_ctl_ stop -m fast -w -t 60 >/dev/null
    say "PostgreSQL stopped"
  fi
}

# --- start, stop, kill ----------------------------------------------------------------------------

start() {
  install
  mkdir -p "$data"
  set_data
  local broker topics listen advertised engine
  broker=$(emostream_config dev-broker)
  topics=$(emostream_config topics)
  read -r listen advertised engine <<<"$broker"
  engine=${storage:-$engine}
  local lhost lport ahost aport
  lhost=$(host_of "$listen") lport=$(port_of "$listen")
  ahost=$(host_of "$advertised") aport=$(port_of "$advertised")
  if [[ -n $port ]]; then lport=$port aport=$port; fi
  broker_port=$lport
  local chost; chost=$(connect_host "$lhost")
  local url="tcp://$chost:$lport"

  local pid
  if pid=$(running_pid); then
    # Its engine is the one on its command line.
    engine=$(tr '\0' '\n' <"/proc/$pid/cmdline" | grep -A1 -x -- --storage-engine | tail -1)
    engine=${engine%%:*}
    say "already running (pid $pid)"
  else
    rm -f "$pidfile"
    local storage_url
    case $engine in
      sqlite) storage_url="sqlite://nisshi.db" ;;
      memory) storage_url="memory://nisshi/" ;;
      postgres) pg_start; storage_url="postgres://postgres:postgres@127.0.0.1:$pg_port/nisshi" ;;
      *) die "unknown storage engine '$engine' (sqlite, postgres or memory)" ;;
    esac
    if answers "$chost" "$lport"; then
      die "something already listens on $chost:$lport"
    fi
    local t0; t0=$(now_us)
    local tls=()
    if [[ -n $cert || -n $key ]]; then tls=(--cert "$cert" --key "$key"); fi
    # SQLite paths are relative to the working directory, so the broker runs inside $data.
    (cd "$data" && exec "$nisshi" broker \
        --listener-url "tcp://$lhost:$lport" \
        --advertised-listener-url "tcp://$ahost:$aport" \
        --storage-engine "$storage_url" "${tls[@]}" </dev/null >>"$log" 2>&1) &
    pid=$!
    echo "$pid" >"$pidfile"
    local deadline=$((SECONDS + 30))
    until answers "$chost" "$lport"; do
      # exists, not alive: the subshell may not have exec'd nisshi yet.
      if ! exists "$pid"; then
        rm -f "$pidfile"
        [[ -z $pg_started ]] || pg_stop
        say "broker exited; its log:"; tail -20 "$log" >&2; exit 1
      fi
      if ((SECONDS >= deadline)); then
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        [[ -z $pg_started ]] || pg_stop
        die "broker did not answer on $chost:$lport within 30 s; see $log"
      fi
      sleep 0.05
    done
    say "answering after $((($(now_us) - t0) / 1000)) ms"
  fi

  if [[ -n $cert ]]; then
    say "Nisshi $NISSHI_VERSION ($engine) listening for TLS only on $lhost:$lport, advertised $ahost:$aport (pid $pid, data $data); the topics are the caller's to create"
    return
  fi
  local settings setting
  while read -r name partitions settings; do
    # The settings a topic is created with (the progress topic keeps every record).
    local with=()
    for setting in $settings; do with+=(--config "$setting"); done
    # An existing topic is refused (exit 1) and left as it is; the listing below checks the result.
    timeout 30 "$nisshi" topic create --broker "$url" --partitions "$partitions" "${with[@]}" \
      --silent "$name" >/dev/null 2>>"$log" </dev/null || true
  done <<<"$topics"
  # The listing is the JSON array of the metadata response's topics: [{"name":"…",…},…].
  local listed names
  listed=$(timeout 30 "$nisshi" topic list --broker "$url" 2>>"$log" </dev/null) \
    || die "could not list the topics on $url; see $log"
  names=$(grep -oE '"name"[[:space:]]*:[[:space:]]*"[^"]*"' <<<"$listed" | sed -E 's/.*"([^"]*)"$/\1/')
  while read -r name partitions; do
    grep -qxF -- "$name" <<<"$names" || die "topic $name was not created; see $log"
  done <<<"$topics"

  say "Nisshi $NISSHI_VERSION ($engine) listening on $lhost:$lport, advertised $ahost:$aport (pid $pid, data $data)"
  say "topics ready: $(awk '{printf "%s(%s) ", $1, $2}' <<<"$topics")"
}

stop() {
  trap '' PIPE
  local pid
  if [[ -f $pidfile ]]; then
    pid=$(<"$pidfile")
    if alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      # Nisshi gives its connections 5 s to finish after SIGTERM, then exits by itself.
      if ! wait_gone "$pid" 7; then
        say "broker (pid $pid) still running 7 s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 30 || die "broker (pid $pid) survived SIGKILL"
      fi
      say "stopped (pid $pid)"
    fi
    rm -f "$pidfile"
  fi
  pg_stop
}

# A crash: SIGKILL, nothing else. The pid file stays, as after a crash; start replaces it.
kill_broker() {
  local pid
  if [[ -f $pidfile ]] && pid=$(<"$pidfile") && alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 30 || die "broker (pid $pid) survived SIGKILL"
    say "killed (pid $pid)"
  fi
}

cmd=${1:-}; shift || true
case $cmd in
  # The default engine's server comes with the broker, so no test installs packages part-way.
  install) install; install_postgres ;;
  start) parse_flags "$@"; start ;;
  stop) parse_flags "$@"; stop ;;
  kill) parse_flags "$@"; kill_broker ;;
  path) echo "$nisshi" ;;
  *) echo "usage: $0 install|start|stop|kill|path [--port P] [--data DIR] [--config FILE] [--storage sqlite|postgres|memory] [--cert PEM --key PEM]" >&2; exit 2 ;;
esac
