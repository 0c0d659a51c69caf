# Sourced by the setup scripts: installs a Debian package that provides a program, with apt-get.
# The caller defines say() and die() (its own prefix on every line).

# apt_install BIN PACKAGE [EXTRA_PACKAGE...]: does nothing when BIN is executable; otherwise
# installs PACKAGE (and the extras) with apt-get, as root or through sudo, and checks that BIN
# came with it. Every failure names the package to install by hand.
apt_install() {
  local bin=$1 package=$2
  shift
  if [ -x "$bin" ]; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "no $bin and no apt-get: install Debian's '$package' package by hand"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 ||
      die "installing $package needs root (apt-get install $package); run as root or install it by hand"
    sudo=(sudo)
  fi
  say "installing Debian's $package with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed: cannot reach the Debian package archive"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    die "apt-get install $package failed; install Debian's '$package' package by hand"
  [ -x "$bin" ] || die "apt-get finished but $bin is missing"
}
