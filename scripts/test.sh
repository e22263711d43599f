#!/usr/bin/env bash
# README command 2: runs every test on a fresh machine that has the Rust toolchain.
# Installs the broker once (into ~/.cache/emostream, reused afterwards), builds the binaries the
# end-to-end tests start as real processes, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "broker: Tansu 0.6.0 (built once per machine, then reused)"
scripts/broker.sh install

step "browser test dependencies: Debian's chromium, an emoji font, node + playwright-core (once)"
scripts/install_browser_deps.sh

step "formatting"
cargo fmt --all -- --check

step "building the binaries the end-to-end tests run"
cargo build --locked --workspace --bins

step "running every test"
# One test binary at a time: each end-to-end test starts a broker, a timely cluster and a
# broadcaster topology of its own, and two of them at once would share two cores.
cargo test --locked --workspace -- --test-threads=1
