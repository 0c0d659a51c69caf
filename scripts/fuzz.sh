#!/usr/bin/env bash
# Coverage-guided fuzzing of every network decoder (fuzz/, cargo-fuzz + libFuzzer, stable Rust).
#
#   scripts/fuzz.sh [SECONDS]            every target for SECONDS each (default 60)
#   scripts/fuzz.sh run TARGET SECONDS   one target
#   scripts/fuzz.sh repro TARGET INPUT   run one input once (what a failure prints)
#   scripts/fuzz.sh cmin [TARGET]        merge what the runs found into fuzz/corpus, minimized
#                                        (files named regression-* are always kept)
#   scripts/fuzz.sh list                 the targets
#
# Installs its pinned cargo-fuzz with `cargo install --locked` when missing. Builds on stable
# with `--sanitizer none` (fuzz/README.md says why) in its own target dir,
# "${CARGO_TARGET_DIR:-target}/fuzz", so it never invalidates the other builds. Runs read the
# committed corpus fuzz/corpus/TARGET and write what they find to the target dir's
# corpus/TARGET, which persists between runs; `cmin` folds it back into fuzz/corpus. A target
# that fails (panic, failed check, input slower than 5 s) stops the run with the input's path
# and the command that reproduces it; exit status 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
TIMEOUT_SECS=5
target_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}/fuzz")"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
say() { printf 'fuzz.sh: %s\n' "$*"; }
die() { printf 'fuzz.sh: error: %s\n' "$*" >&2; exit 2; }

install() {
  if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
  fi
}

targets() { (cd fuzz && cargo fuzz list); }

build() {
  install
  say "building the fuzz targets in $target_dir"
  # --sanitizer none: the sanitizers need nightly. -max-loads-per-memcmp=0: keep every
  # `memcmp`/`bcmp` a call, so libFuzzer's own interceptors see what the code compares input
  # against (`v=0`, `phx_join`...) instead of inlined loads it cannot read; fuzz/README.md.
  # --debug-assertions, and overflow checks from fuzz/Cargo.toml's release profile.
  (cd fuzz && RUSTFLAGS="-Cllvm-args=-max-loads-per-memcmp=0" cargo fuzz build \
    --sanitizer none --debug-assertions --target-dir "$target_dir" "$@")
}

# libFuzzer options of target $1 for a run, or for the merge into the committed corpus when $2
# is "cmin".
options() {
  # A session script with two or three (slimmed) real offers fits in 8 KiB; longer scripts
  # mostly repeat, make the corpus large and the runs slow. The committed corpus keeps 4 KiB of
  # each (98.6% of the edges, at 360 KB instead of 530 KB); runs regrow the rest from it.
  # A socket script needs a frame over the 8 KiB limit (1009), not many.
  case "$1:${2:-}" in
    media_session:cmin) echo "-max_len=4096" ;;
    media_session:*) echo "-max_len=8192" ;;
    phoenix_socket:*) echo "-max_len=16384" ;;
  esac
}

run_one() {
  local t="$1" secs="$2" work="$target_dir/corpus/$1" art="$target_dir/artifacts/$1/"
  local dict=() log="$target_dir/logs/$1.log"
  mkdir -p "$work" "$art" "$(dirname "$log")"
  local corpus=("$work") opts
  read -ra opts <<<"$(options "$t")"
  [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
  [ -d "fuzz/corpus/$t" ] && corpus+=("fuzz/corpus/$t")
  say "$t: ${secs}s"
  local status=0
  "$bin_dir/$t" "${dict[@]}" "${opts[@]}" -max_total_time="$secs" -timeout="$TIMEOUT_SECS" \
    -print_final_stats=1 -artifact_prefix="$art" "${corpus[@]}" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    grep -aE "panicked at|^SUMMARY|ERROR: libFuzzer" -A 4 "$log" | head -n 30 >&2 || true
    local input
    input="$(grep -aoE "Test unit written to [^ ]+" "$log" | tail -n 1 | cut -d' ' -f5 || true)"
    [ -n "$input" ] || input="$(ls -t "$art" 2>/dev/null | head -n 1 | sed "s|^|$art|")"
    printf '\nfuzz.sh: %s FAILED (exit %s); log: %s\n' "$t" "$status" "$log" >&2
    if [ -n "$input" ] && [ -f "$input" ]; then
      printf 'fuzz.sh: failing input: %s (%s bytes), starts with:\n' "$input" "$(wc -c <"$input")" >&2
      head -c 600 "$input" | cat -v >&2
      printf '\nfuzz.sh: reproduce: scripts/fuzz.sh repro %s %s\n' "$t" "$input" >&2
    fi
    exit 1
  fi
  # libFuzzer's last status line: runs, coverage (cov: edges, ft: features), corpus, exec/s.
  say "$t: $(grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 |
    sed -E 's/^#([0-9]+)[[:space:]]+DONE[[:space:]]+/\1 runs, /')"
}

case "${1:-60}" in
  list) install; targets ;;
  run)
    [ $# -eq 3 ] || die "usage: scripts/fuzz.sh run TARGET SECONDS"
    build "$2"; run_one "$2" "$3" ;;
  repro)
    [ $# -eq 3 ] || die "usage: scripts/fuzz.sh repro TARGET INPUT"
    build "$2"
    RUST_BACKTRACE=1 "$bin_dir/$2" -runs=1 "$3" ;;
  cmin)
    build
    for t in ${2:-$(targets)}; do
      fresh="$target_dir/cmin/$t"
      rm -rf "$fresh" && mkdir -p "$fresh" "$target_dir/corpus/$t"
      mkdir -p "fuzz/corpus/$t"
      # -use_counters=0: keep the fewest inputs that reach every edge (not every hit-count
      # bucket), so the committed corpus stays small; runs rebuild the rest from it.
      read -ra opts <<<"$(options "$t" cmin)"
      "$bin_dir/$t" "${opts[@]}" -merge=1 -use_counters=0 -timeout="$TIMEOUT_SECS" "$fresh" "fuzz/corpus/$t" \
        "$target_dir/corpus/$t" >"$target_dir/cmin-$t.log" 2>&1 ||
        die "$t: merge failed, see $target_dir/cmin-$t.log"
      # Inputs that once failed stay whatever their coverage: every run replays them first.
      find "fuzz/corpus/$t" -name 'regression-*' -exec cp {} "$fresh/" \;
      rm -rf "fuzz/corpus/$t" && mkdir -p "fuzz/corpus/$t" && cp "$fresh"/* "fuzz/corpus/$t/"
      say "$t: $(ls "fuzz/corpus/$t" | wc -l) inputs, $(cat "fuzz/corpus/$t"/* | wc -c) bytes"
    done ;;
  *[!0-9]*) die "unknown command '$1' (see the header of scripts/fuzz.sh)" ;;
  *)
    build
    for t in $(targets); do run_one "$t" "$1"; done
    say "every target ran ${1}s without a failure" ;;
esac
