#!/usr/bin/env bash
# Installs what the Janus comparison benchmark (examples/janus_bench.rs) needs: Debian's `janus`
# package (Janus WebRTC Server 1.1.2 on bookworm, /usr/bin/janus with the VideoRoom plugin,
# libjanus_videoroom.so, and the HTTP transport), with apt-get.
# Idempotent: does nothing when /usr/bin/janus and the plugin are there. The package starts no
# service here; the benchmark runs its own Janus in a private network namespace with a
# temporary configuration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup-janus.sh: %s\n' "$*"; }
die() { printf 'setup-janus.sh: error: %s\n' "$*" >&2; exit 1; }

janus_bin=/usr/bin/janus
# The plugin directory is multiarch (/usr/lib/x86_64-linux-gnu/janus/plugins on amd64).
find_plugin() {
  find /usr/lib -path '*/janus/plugins/libjanus_videoroom.so' -print -quit 2>/dev/null
}
# `janus --version` prints the version, then exits 1 ("Unknown option"): keep the first line only.
version() { { "$janus_bin" --version 2>/dev/null || true; } | head -n 1; }
# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh
if [ -x "$janus_bin" ] && [ -n "$(find_plugin)" ]; then
  say "janus already installed ($(version))"
  exit 0
fi
apt_install "$janus_bin" janus
[ -n "$(find_plugin)" ] || die "janus is installed but libjanus_videoroom.so is missing"
say "installed $(version), videoroom plugin $(find_plugin)"
