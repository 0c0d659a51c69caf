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
if [ -x "$etcd_bin" ]; then
  say "etcd already installed ($("$etcd_bin" --version 2>/dev/null | head -n 1 || echo 'version unknown'))"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 ||
  die "no $etcd_bin and no apt-get: install Debian's 'etcd-server' package (or etcd >= 3.4 at $etcd_bin) by hand"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "installing etcd needs root (apt-get install etcd-server); run as root or install it by hand"
  sudo=(sudo)
fi
say "installing Debian's etcd-server with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq || die "apt-get update failed: cannot reach the Debian package archive"
"${sudo[@]}" apt-get install -y -qq --no-install-recommends etcd-server >/dev/null ||
  die "apt-get install etcd-server failed; install Debian's 'etcd-server' package by hand"
[ -x "$etcd_bin" ] || die "apt-get finished but $etcd_bin is missing"
say "installed $("$etcd_bin" --version 2>/dev/null | head -n 1 || echo etcd)"
