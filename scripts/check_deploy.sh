#!/usr/bin/env bash
# Checks the deployment files of deploy/ (scripts/test.sh runs it as one step):
#   1. the systemd units, with `systemd-analyze verify` (Debian's systemd package, installed when
#      missing): each unit (templates as one instance each) in a throw-away root that holds the
#      host's own unit files and stand-in executables at the units' ExecStart paths; any message,
#      a warning included, fails the check;
#   2. the Kubernetes manifests, offline against the Kubernetes schemas bundled in
#      kubernetes-validate (from PyPI, into a venv in ${EMOSTREAM_CACHE:-~/.cache/emostream} once),
#      strictly, for the oldest and newest Kubernetes versions we claim
#      (scripts/check_kubernetes.py, which also renders the ConfigMap from cluster.toml);
#   3. deploy/kubernetes/cluster.toml, read by emostream-config as every tier reads it;
#   4. every ExecStart and container command line, parsed by the binary it names (with --help
#      appended), when the binaries are built: ${EMOSTREAM_BIN_DIR:-target/debug}, as
#      scripts/test.sh leaves them before this step; without them this check is skipped, and says so.
# deploy/Containerfile is not checked: no container runtime here (deploy/README.md).
#
#   scripts/check_deploy.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

KUBERNETES_VALIDATE=1.37.0
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
cache="${EMOSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emostream}"
venv="$cache/kubernetes-validate-$KUBERNETES_VALIDATE"

say() { printf '[check_deploy] %s\n' "$*" >&2; }
as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }
apt_install() {
  say "apt-get install $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# --- the tools, once --------------------------------------------------------------------------
command -v systemd-analyze >/dev/null || apt_install systemd
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  say "installing kubernetes-validate $KUBERNETES_VALIDATE into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE"
fi

# --- 1. systemd units ---------------------------------------------------------------------------
sysroot=$(mktemp -d "${TMPDIR:-/tmp}/emostream-check-deploy.XXXXXX")
trap 'rm -rf "$sysroot"' EXIT
mkdir -p "$sysroot/usr/lib/systemd" "$sysroot/etc/systemd/system"
cp -r /usr/lib/systemd/system "$sysroot/usr/lib/systemd/"
cp deploy/systemd/* "$sysroot/etc/systemd/system/"
for exe in $(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' deploy/systemd/*.service | sort -u); do
  mkdir -p "$sysroot$(dirname "$exe")"
  printf '#!/bin/sh\n' >"$sysroot$exe"
  chmod +x "$sysroot$exe"
done
# Each template is verified (and its command line parsed, below) as one instance.
declare -A instance=([emostream-dataflow@.service]=0 [emostream-broadcaster-cluster@.service]=c0
  [emostream-broadcaster-subscriber@.service]=c0-s0)
units=()
for file in deploy/systemd/*; do
  unit=$(basename "$file")
  if [[ $unit == *@.* ]]; then
    [[ -n ${instance[$unit]:-} ]] || { say "no instance to verify $unit with: add one here"; exit 1; }
    unit=${unit/@./@${instance[$unit]}.}
  fi
  units+=("$unit")
done
messages=$(cd "$sysroot/etc/systemd/system" && systemd-analyze verify --man=no --root="$sysroot" "${units[@]}" 2>&1) \
  || { printf '%s\n' "$messages" >&2; say "systemd-analyze verify failed"; exit 1; }
[[ -z $messages ]] || { printf '%s\n' "$messages" >&2; say "systemd-analyze verify printed messages"; exit 1; }
say "systemd: ${#units[@]} units verified (${units[*]})"

# --- 2. Kubernetes manifests (and their command lines, with the binaries: 4.) ---------------------
bin_dir=${EMOSTREAM_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
binaries=1
for tier in gateway dataflow broadcaster; do [[ -x $bin_dir/emostream-$tier ]] || binaries=0; done
if ((binaries)); then
  EMOSTREAM_BIN_DIR="$bin_dir" "$venv/bin/python" scripts/check_kubernetes.py deploy/kubernetes "${KUBERNETES_VERSIONS[@]}"
else
  "$venv/bin/python" scripts/check_kubernetes.py deploy/kubernetes "${KUBERNETES_VERSIONS[@]}"
fi

# --- 3. the Kubernetes configuration, as the tiers read it ---------------------------------------
config_bin=${EMOSTREAM_CONFIG_BIN:-}
if [[ -z $config_bin ]]; then
  cargo build --quiet --locked -p emostream-protocol --bin emostream-config
  config_bin="${CARGO_TARGET_DIR:-target}/debug/emostream-config"
fi
"$config_bin" --config deploy/kubernetes/cluster.toml print >/dev/null
say "deploy/kubernetes/cluster.toml: read by emostream-config without error"

# --- 4. the units' command lines, parsed by the binaries themselves (--help appended) -------------
if ((binaries)); then
  for file in deploy/systemd/*.service; do
    unit=$(basename "$file")
    line=$(sed -n 's/^ExecStart=//p' "$file")
    line=${line//%i/${instance[$unit]:-}}
    line=${line//'${DATAFLOW_PROCESSES}'/4}
    read -ra words <<<"${line//\/usr\/local\/bin\//$bin_dir/}"
    "${words[@]}" --help >/dev/null || { say "$unit: its ExecStart does not parse: ${words[*]}"; exit 1; }
  done
  say "command lines of the units and manifests: parsed by the binaries in $bin_dir"
else
  say "command lines NOT parsed: no emostream-{gateway,dataflow,broadcaster} in $bin_dir (scripts/test.sh builds them first; EMOSTREAM_BIN_DIR names another folder)"
fi
