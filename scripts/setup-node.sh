#!/usr/bin/env bash
# Install the Node.js test-driver dependencies (tests/node) from the committed
# lockfile with `npm ci`. Idempotent: does nothing when every package in
# tests/node/package-lock.json is already installed at its locked version.
# Works from any working directory.
set -euo pipefail

script_path="${BASH_SOURCE[0]}"
case "$script_path" in
  */*) script_dir="${script_path%/*}" ;;
  *) script_dir="." ;;
esac
repo_root="$(cd "$script_dir/.." && pwd)"
node_dir="$repo_root/tests/node"

if ! command -v node >/dev/null 2>&1; then
  echo "setup-node.sh: error: 'node' not found on PATH; install Node.js >= 18 (20 LTS recommended)" >&2
  exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup-node.sh: error: 'npm' not found on PATH; install npm (it ships with Node.js)" >&2
  exit 1
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "setup-node.sh: error: Node.js >= 18 required, found $(node --version)" >&2
  exit 1
fi

if [ ! -f "$node_dir/package-lock.json" ]; then
  echo "setup-node.sh: error: $node_dir/package-lock.json is missing" >&2
  exit 1
fi

# Exit 0 when node_modules matches the lockfile, 1 otherwise.
installed_ok() {
  (cd "$node_dir" && node -e '
    const fs = require("fs");
    const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
    for (const [p, meta] of Object.entries(lock.packages || {})) {
      if (p === "") continue;
      let v = null;
      try { v = JSON.parse(fs.readFileSync(p + "/package.json", "utf8")).version; } catch (_) {}
      if (v === null && meta.optional) continue;
      if (v !== meta.version) {
        console.error("setup-node.sh: " + p + ": want " + meta.version + ", have " + (v || "nothing"));
        process.exit(1);
      }
    }
  ')
}

if [ -d "$node_dir/node_modules" ] && installed_ok 2>/dev/null; then
  echo "setup-node.sh: tests/node dependencies already installed at locked versions"
  exit 0
fi

echo "setup-node.sh: installing tests/node dependencies with npm ci"
(cd "$node_dir" && npm ci --no-audit --no-fund)

if ! installed_ok; then
  echo "setup-node.sh: error: npm ci finished but node_modules does not match package-lock.json" >&2
  exit 1
fi
echo "setup-node.sh: done"
