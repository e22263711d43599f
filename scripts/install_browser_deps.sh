#!/usr/bin/env bash
# What the browser test (e2e/tests/browser.rs) needs beyond the Rust toolchain: Debian's
# Chromium, a colour emoji font (without one every emoji in the screenshot is a blank box),
# Node.js with npm, and playwright-core from e2e/browser/package-lock.json. Each part is
# installed only when missing, so every later run costs a few milliseconds; CI calls this on a
# fresh machine from scripts/test.sh.
#
#   scripts/install_browser_deps.sh
#
# Playwright's own browser download (`npx playwright install`) is not used: it fetches builds
# from a CDN that is unreachable here, and Debian's chromium is patched and updated by apt.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '==> %s\n' "$*" >&2; }

# Root installs directly; anyone else needs sudo for apt-get.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg-query -W -f='${Status}' fonts-noto-color-emoji 2>/dev/null | grep -q 'ok installed' ||
  missing+=(fonts-noto-color-emoji)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# playwright-core 1.65 declares node >= 20; an older node fails in obscure ways later, so say it now.
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "Node.js $(node --version) is too old for playwright-core: install Node.js 20 or newer" >&2
  exit 1
fi

# npm ci is reproducible (exact versions from the lock file) but always reinstalls; skip it when
# the locked version is already there.
browser=e2e/browser
want=$(node -p "require('./$browser/package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "try { require('./$browser/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$want" != "$have" ]; then
  step "npm ci in $browser (playwright-core $want)"
  (cd "$browser" && npm ci --no-audit --no-fund)
fi
step "browser deps: $(/usr/bin/chromium --version), node $(node --version), playwright-core $want"
