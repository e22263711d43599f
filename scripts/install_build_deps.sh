#!/usr/bin/env bash
# What building Emostream needs beyond the Rust toolchain: a C toolchain and make (librdkafka is
# compiled from source by rdkafka-sys), pkg-config and OpenSSL's headers (librdkafka is built
# with TLS, so `security.protocol = "ssl"` / `"sasl_ssl"` works by configuration alone), and
# zlib's; and for the tests over network namespaces (testkit's netns), `ip` and `tc` (iproute2)
# and `nft` (nftables, the tests' packet loss). Each is installed with apt-get only when missing,
# so later runs cost milliseconds.
#
#   scripts/install_build_deps.sh
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
[ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
{ command -v ip && command -v tc; } >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  printf '==> apt-get install %s\n' "${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
