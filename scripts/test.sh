#!/usr/bin/env bash
# README command 2: runs every test on a fresh machine that has the Rust toolchain.
# Installs the build prerequisites, the broker and cargo-nextest once (into ~/.cache/emostream,
# reused afterwards), checks formatting and clippy, builds every target (benches included; the
# end-to-end tests start the binaries as real processes), checks that the minimum Rust version
# builds the workspace, checks the deployment files of deploy/ and up.sh's failure and stop
# paths, fuzzes the gateway's body parser and the subscriber's WebSocket frame reader briefly,
# then runs the whole workspace's tests with cargo nextest (unit and in-process tests in
# parallel, system tests one at a time: .config/nextest.toml) and prints the time it took.
#
#   scripts/test.sh                      # everything
#   scripts/test.sh -p emostream-e2e --test broker_restart   # one test target (cargo nextest run
#                                                            # args; no fuzz run or version check)
#
# The whole run is bounded by TEST_TIMEOUT (default 80 minutes, under CI's 90: on a machine with
# nothing cached the one-time builds of the broker, cargo-nextest, cargo-fuzz and the 1.88 check
# come first, and such a run passed 50 minutes on 2 cores; with the caches warm a fresh clone
# took 24, 2026-12-08).
set -euo pipefail
cd "$(dirname "$0")/.."

# The whole run, installs included, is bounded once, here: the script runs itself again under
# timeout(1), and a run that hangs fails with a message instead of running into CI's 90 minutes.
if [[ -z ${EMOSTREAM_TEST_BOUNDED:-} ]]; then
  limit=${TEST_TIMEOUT:-80m}
  status=0
  EMOSTREAM_TEST_BOUNDED=1 timeout --signal=TERM --kill-after=30s "$limit" "$0" "$@" || status=$?
  ((status == 124)) && echo "scripts/test.sh did not finish within $limit" >&2
  exit "$status"
fi

started=$SECONDS
step() { printf '\n==> [%dm%02ds] %s\n' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)) "$*" >&2; }

step "build prerequisites: a C toolchain, pkg-config, OpenSSL and zlib headers (once)"
scripts/install_build_deps.sh

step "broker: Nisshi 0.8.1 (built once per machine into ~/.cache/emostream, then reused)"
scripts/broker.sh install

# cargo-nextest, built once into the per-user cache like cargo-fuzz (fuzz.sh) and the broker.
NEXTEST_VERSION=0.9.143
cache="${EMOSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emostream}"
nextest="$cache/cargo-nextest-$NEXTEST_VERSION/bin/cargo-nextest"
step "cargo-nextest $NEXTEST_VERSION (built once per machine into $cache, then reused)"
[[ -x $nextest ]] || cargo install --locked --quiet cargo-nextest --version "$NEXTEST_VERSION" \
  --root "$cache/cargo-nextest-$NEXTEST_VERSION"

step "browser test dependencies: Debian's chromium, an emoji font, node + playwright-core (once)"
scripts/install_browser_deps.sh

step "formatting"
cargo fmt --all -- --check

step "clippy on every target (benches and tests included), warnings are errors"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "building every target: the binaries the end-to-end tests run, the tests, benches and examples"
cargo build --locked --workspace --all-targets

# The oldest Rust the workspace says it builds with (Cargo.toml's rust-version, the README's
# "stable ≥"), checked with that release itself: installed once with rustup, its check kept in a
# target folder in the cache, so only a first run pays for every dependency (about 7 CPU
# minutes; a later one about 10 CPU seconds). Not when running one test, like the fuzz run.
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
if (($# == 0)); then
  step "minimum Rust version: cargo +$msrv check of every target (toolchain and check cached)"
  rustup run "$msrv" rustc --version >/dev/null 2>&1 || rustup toolchain install "$msrv" --profile minimal
  CARGO_TARGET_DIR="$cache/msrv-target" cargo "+$msrv" check --locked --workspace --all-targets
fi

step "deployment files: systemd units (systemd-analyze verify), Kubernetes manifests (offline schemas)"
scripts/check_deploy.sh

step "up.sh: a tier that fails or dies, Ctrl-C and SIGTERM (stand-in binaries, a few seconds)"
scripts/test_up.sh

if (($# == 0)); then
  step "fuzzing the gateway's body parser and the viewer frame reader for ${FUZZ_SECONDS:-30} s in all (nightly + cargo-fuzz, cached once)"
  scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi

step "running the tests: unit and in-process tests in parallel, system tests one at a time"
# Each system test starts a broker, a timely cluster and a broadcaster topology of its own, and
# two at once would share two cores: .config/nextest.toml puts them in a group of one thread.
which=(--workspace)
(($#)) && which=("$@")
status=0
"$nextest" nextest run --locked "${which[@]}" || status=$?
step "done in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s (exit $status)"
exit "$status"
