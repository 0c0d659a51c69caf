#!/usr/bin/env bash
# Builds the web app bundle: web/src -> web/dist/app.js + app.css (esbuild, pinned in
# web/package-lock.json). The bundle is committed and compiled into the server binary, so
# `cargo run` needs no npm; rerun this after changing anything under web/src and commit dist/.
#
#   scripts/build-web.sh           rebuild web/dist
#   scripts/build-web.sh --check   rebuild into a temporary dir and fail if web/dist differs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../web"

die() { printf 'build-web.sh: error: %s\n' "$*" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || die "'npm' not found on PATH; install Node.js >= 18 with npm"

# npm ci only when node_modules does not hold the locked versions.
if ! node -e '
  const fs = require("fs");
  const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
  for (const [p, meta] of Object.entries(lock.packages || {})) {
    if (p === "") continue;
    let v = null;
    try { v = JSON.parse(fs.readFileSync(p + "/package.json", "utf8")).version; } catch (_) {}
    if (v === null && meta.optional) continue;
    if (v !== meta.version) process.exit(1);
  }' 2>/dev/null; then
  echo "build-web.sh: installing web dependencies with npm ci"
  npm ci --no-audit --no-fund >/dev/null || die "npm ci in web/ failed"
fi

if [ "${1:-}" = "--check" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  node build.mjs "$tmp/dist"
  if ! diff -r -q "$tmp/dist" dist >/dev/null; then
    diff -r -q "$tmp/dist" dist >&2 || true
    die "web/dist is out of date with web/src: run scripts/build-web.sh and commit web/dist"
  fi
  echo "build-web.sh: web/dist matches web/src"
else
  rm -rf dist
  node build.mjs dist
  echo "build-web.sh: built web/dist ($(wc -c <dist/app.js) bytes of JS, $(wc -c <dist/app.css) bytes of CSS)"
fi
