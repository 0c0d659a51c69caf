#!/usr/bin/env bash
# Installs what the browser end-to-end test needs: Debian's `chromium` package (apt-get) and
# the pinned `playwright-core` driver and `axe-core` in tests/e2e (npm ci, from the committed
# lockfile).
# Idempotent: does nothing when both are already there. Never downloads a browser build of
# its own: playwright-core is only the driver, the test runs /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup-chromium.sh: %s\n' "$*"; }
die() { printf 'setup-chromium.sh: error: %s\n' "$*" >&2; exit 1; }

chromium_bin=/usr/bin/chromium
# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh
if [ -x "$chromium_bin" ]; then
  say "chromium already installed ($("$chromium_bin" --version 2>/dev/null || echo 'version unknown'))"
else
  apt_install "$chromium_bin" chromium fonts-dejavu-core
  say "installed $("$chromium_bin" --version 2>/dev/null || echo chromium)"
fi

command -v npm >/dev/null 2>&1 || die "'npm' not found on PATH; install Node.js >= 18 with npm"
e2e=tests/e2e
# Every package the lockfile pins at the top level (playwright-core, axe-core) must be installed
# at its pinned version; otherwise `npm ci` installs exactly the lockfile.
stale="$(node -e '
  const lock = require("./'"$e2e"'/package-lock.json");
  const deps = Object.keys(lock.packages[""].dependencies || {});
  const off = deps.filter((d) => {
    let have = "";
    try { have = require("./'"$e2e"'/node_modules/" + d + "/package.json").version; } catch (_) {}
    return have !== lock.packages["node_modules/" + d].version;
  });
  process.stdout.write(off.join(" "));
')"
if [ -z "$stale" ]; then
  say "the browser test's npm packages are installed in $e2e"
else
  say "installing $stale in $e2e with npm ci"
  # The driver must never fetch a browser of its own.
  (cd "$e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund) ||
    die "npm ci in $e2e failed"
fi
say "done"
