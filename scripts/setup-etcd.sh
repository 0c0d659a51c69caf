#!/usr/bin/env bash
# Installs what the etcd integration tests (tests/it/etcd.rs) need: Debian's `etcd-server`
# package (etcd 3.4, /usr/bin/etcd), with apt-get.
# Idempotent: does nothing when /usr/bin/etcd is there. The package also enables an
# etcd.service; the tests never use it: each starts its own etcd on free loopback ports with a
# temporary data directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup-etcd.sh: %s\n' "$*"; }
die() { printf 'setup-etcd.sh: error: %s\n' "$*" >&2; exit 1; }

etcd_bin=/usr/bin/etcd
# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh
if [ -x "$etcd_bin" ]; then
  say "etcd already installed ($("$etcd_bin" --version 2>/dev/null | head -n 1 || echo 'version unknown'))"
  exit 0
fi
apt_install "$etcd_bin" etcd-server
say "installed $("$etcd_bin" --version 2>/dev/null | head -n 1 || echo etcd)"
