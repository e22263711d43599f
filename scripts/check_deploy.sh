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
#   3. deploy/kubernetes/cluster.toml, read by emostream-config as every tier reads it.
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
units=()
for file in deploy/systemd/*; do
  unit=$(basename "$file")
  case $unit in
    emostream-dataflow@.service) unit=emostream-dataflow@0.service ;;
    emostream-broadcaster-cluster@.service) unit=emostream-broadcaster-cluster@c0.service ;;
    emostream-broadcaster-subscriber@.service) unit=emostream-broadcaster-subscriber@c0-s0.service ;;
    *@.*) say "no instance to verify $unit with: add one here"; exit 1 ;;
  esac
  units+=("$unit")
done
messages=$(cd "$sysroot/etc/systemd/system" && systemd-analyze verify --man=no --root="$sysroot" "${units[@]}" 2>&1) \
  || { printf '%s\n' "$messages" >&2; say "systemd-analyze verify failed"; exit 1; }
[[ -z $messages ]] || { printf '%s\n' "$messages" >&2; say "systemd-analyze verify printed messages"; exit 1; }
say "systemd: ${#units[@]} units verified (${units[*]})"

# --- 2. Kubernetes manifests --------------------------------------------------------------------
"$venv/bin/python" scripts/check_kubernetes.py deploy/kubernetes "${KUBERNETES_VERSIONS[@]}"

# --- 3. the Kubernetes configuration, as the tiers read it ---------------------------------------
config_bin=${EMOSTREAM_CONFIG_BIN:-}
if [[ -z $config_bin ]]; then
  cargo build --quiet --locked -p emostream-protocol --bin emostream-config
  config_bin="${CARGO_TARGET_DIR:-target}/debug/emostream-config"
fi
"$config_bin" --config deploy/kubernetes/cluster.toml print >/dev/null
say "deploy/kubernetes/cluster.toml: read by emostream-config without error"
