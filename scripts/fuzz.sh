#!/usr/bin/env bash
# Fuzzes the hand-written parsers for SECONDS in all (default 30), split between two targets:
# - the gateway's body parser (gateway/fuzz, target parse_body): arbitrary bytes must never panic
#   it, and its fast and slow paths must agree (the target's own doc says how);
# - the subscriber's reader of viewers' WebSocket frames (broadcaster/fuzz, target viewer_frames):
#   no panic, the same frames however the bytes are cut into reads, only the close codes a viewer
#   can be failed with.
# scripts/test.sh runs it briefly on every CI run; run it longer by hand:
#
#   scripts/fuzz.sh          # 30 s
#   scripts/fuzz.sh 600      # ten minutes
#
# cargo-fuzz needs a nightly toolchain (libFuzzer's sanitizer flags). It is installed once into
# ~/.cache/emostream/cargo-fuzz-<version> and the fuzz builds are kept in
# ~/.cache/emostream/fuzz-target, outside the clone, so a fresh clone reuses both. The checked-in
# corpus is copied to a scratch folder: a run never changes the repository, except for a crash,
# which libFuzzer writes to <crate>/fuzz/artifacts/<target>/ (reproduce with
# `cargo +nightly fuzz run <target> FILE` in <crate>/fuzz).
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

scratch=$(mktemp -d "${TMPDIR:-/tmp}/emostream-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# Runs target $2 of the fuzz crate in $1 for $3 seconds on a copy of its corpus.
fuzz() {
  local dir=$1 target=$2 secs=$3 status=0
  local corpus="$scratch/$target" log="$scratch/$target.log"
  mkdir -p "$corpus"
  cp "$root/$dir/corpus/$target"/* "$corpus"/
  say "building and running $target for $secs s"
  (cd "$root/$dir" && PATH="$prefix/bin:$PATH" CARGO_TARGET_DIR="$cache/fuzz-target" \
    cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$secs" -print_final_stats=1) \
    >"$log" 2>&1 || status=$?
  if ((status == 0)); then
    grep -E '^(Done|stat::number_of_executed_units)' "$log" >&2 || true
    say "$target: no failure in $secs s"
  else
    tail -60 "$log" >&2
    say "$target FAILED (exit $status): the input is in $dir/artifacts/$target/"
  fi
  return "$status"
}

# The gateway's parser has more to explore; the frame reader is small.
reader_seconds=$(( seconds / 3 > 0 ? seconds / 3 : 1 ))
parser_seconds=$(( seconds - reader_seconds > 0 ? seconds - reader_seconds : 1 ))
status=0
fuzz gateway/fuzz parse_body "$parser_seconds" || status=$?
fuzz broadcaster/fuzz viewer_frames "$reader_seconds" || status=$?
exit "$status"
