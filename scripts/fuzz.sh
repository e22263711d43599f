#!/usr/bin/env bash
# Fuzzes the gateway's body parser (gateway/fuzz, target parse_body) for SECONDS (default 30):
# arbitrary bytes must never panic it, and its fast and slow paths must agree (the target's own
# doc says how). scripts/test.sh runs it briefly on every CI run; run it longer by hand:
#
#   scripts/fuzz.sh          # 30 s
#   scripts/fuzz.sh 600      # ten minutes
#
# cargo-fuzz needs a nightly toolchain (libFuzzer's sanitizer flags). It is installed once into
# ~/.cache/emostream/cargo-fuzz-<version> and the fuzz build is kept in ~/.cache/emostream/fuzz-target,
# outside the clone, so a fresh clone reuses both. The checked-in corpus is copied to a scratch
# folder: a run never changes the repository, except for a crash, which libFuzzer writes to
# gateway/fuzz/artifacts/parse_body/ (reproduce with `cargo +nightly fuzz run parse_body FILE`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
CARGO_FUZZ_VERSION=0.13.2
cache="${EMOSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emostream}"
prefix="$cache/cargo-fuzz-$CARGO_FUZZ_VERSION"

say() { printf '[fuzz] %s\n' "$*" >&2; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "no nightly toolchain; installing it with rustup (cargo-fuzz needs one)"
  rustup toolchain install nightly --profile minimal
fi
if [[ ! -x $prefix/bin/cargo-fuzz ]]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION into $prefix (once)"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$prefix"
fi

corpus=$(mktemp -d "${TMPDIR:-/tmp}/emostream-fuzz-corpus.XXXXXX")
trap 'rm -rf "$corpus"' EXIT
cp "$root"/gateway/fuzz/corpus/parse_body/* "$corpus"/

say "building and running parse_body for $seconds s"
cd "$root/gateway/fuzz"
log="$corpus/../$(basename "$corpus").log"
trap 'rm -rf "$corpus" "$log"' EXIT
status=0
PATH="$prefix/bin:$PATH" CARGO_TARGET_DIR="$cache/fuzz-target" \
  cargo +nightly fuzz run parse_body "$corpus" -- -max_total_time="$seconds" -print_final_stats=1 \
  >"$log" 2>&1 || status=$?
if ((status == 0)); then
  grep -E '^(Done|stat::number_of_executed_units)' "$log" >&2 || true
  say "no panic and no disagreement in $seconds s"
else
  tail -60 "$log" >&2
  say "FAILED (exit $status): the input is in gateway/fuzz/artifacts/parse_body/"
fi
exit "$status"
