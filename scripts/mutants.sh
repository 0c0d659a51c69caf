#!/usr/bin/env bash
# Mutation testing (cargo-mutants, `cargo install cargo-mutants --locked`) of the process
# runtime, the registry, room, channel and socket processes, the Phoenix socket core and the
# negotiation core. See HARNESS.md for the results and how to read them.
#
#   scripts/mutants.sh --list      the mutants per module, nothing built (a dry run)
#   scripts/mutants.sh             pass 1 and pass 2 below
#   scripts/mutants.sh -- ARGS     ARGS go to both cargo-mutants runs (e.g. `-- --re 'registry'`)
#
# Pass 1 runs the SIMULATION ALONE on every mutant: the madsim build (profile `sim`, package
# videoroom-sim), i.e. the test command's campaign, regression seeds, scenarios and registry race,
# without `pinned_trace_summaries` (it compares whole traces with snapshots, so it fails on any
# change of behaviour, equivalent or not, and would count every mutant as caught). Its score is
# the "simulation alone" figure.
# Pass 2 runs the rest of the suite (`cargo test`: unit tests and tests/it on real tokio) on the
# mutants pass 1 missed, selected by name (`--re`). A mutant is caught by the whole suite if
# either pass catches it; running pass 2 only on pass 1's survivors gives the same verdicts as
# running everything on every mutant, at a fraction of the cost.
#
# MUTANTS_FILES (default: the modules above, space-separated globs), MUTANTS_OUT (default
# $target/mutants) and MUTANTS_JOBS (default 1: the machine is shared) override.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

list=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [--list] [-- cargo-mutants args]" >&2; exit 1 ;;
  esac
  shift
done

target="${CARGO_TARGET_DIR:-$PWD/target}"
out="${MUTANTS_OUT:-$target/mutants}"
mkdir -p "$out"
default_files="src/rt/** src/registry/** src/room/** src/channel/** src/conn/**
  src/phoenix/socket.rs src/engine/tracks.rs src/engine/negotiation.rs src/engine/session.rs"
read -r -a files <<<"$(tr '\n' ' ' <<<"${MUTANTS_FILES:-$default_files}")"
globs=()
for f in "${files[@]}"; do globs+=(-f "$f"); done
common=(
  --gitignore false # the copy needs tests/node/node_modules (gitignored) for pass 2
  --jobs "${MUTANTS_JOBS:-1}" --baseline skip
  "${globs[@]}"
  # Replacements by constructors these types do not have (Addr::new(), MutexGuard::from(..),
  # Box::leak(Box::new(Entry::new())), ...): never compile; listed by `--list`, not built.
  --exclude-re '::new\(|::from\(|::from_iter\(|MutexGuard|Box::leak'
)
# Incremental sim-profile builds: cargo-mutants builds every mutant in one copy of the tree, so a
# one-line mutant recompiles in seconds instead of a full optimised build of the crate.
# One failing seed is the verdict: campaigns stop at the first (VIDEOROOM_SIM_FAIL_FAST) instead
# of examining every failing seed of a mutant that breaks them all (minutes per mutant).
sim_env=(env RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target/sim" CARGO_PROFILE_SIM_INCREMENTAL=true
  VIDEOROOM_SIM_FAIL_FAST=1)

# Mutants per file from `cargo mutants --list` lines ("src/x.rs:12:5: replace ...").
per_file() { sed -E 's/:[0-9]+:[0-9]+: .*//' | sort | uniq -c | awk '{printf "  %-28s %5d\n", $2, $1; n += $1} END {printf "  %-28s %5d\n", "total", n}'; }

if [ "$list" = 1 ]; then
  # The sim build's view: code under cfg(madsim) (src/rt/sim.rs) is what the simulation runs.
  "${sim_env[@]}" cargo mutants "${common[@]}" --list "${extra[@]}" | per_file
  exit 0
fi

# The harness's own plumbing tests (exit codes, name errors, knob echo, fault healing, scenario
# weights, fresh-process replay) check the simulator, not the product; under a mutant that
# breaks every world they only wait out single hung worlds. The product's oracles run in the
# rest: the campaign with its regression seeds, the named scenarios, the in-process replay
# check and the registry race.
skips=(--skip pinned_trace_summaries --skip exit_codes_distinguish_failures
  --skip unknown_names_are_rejected --skip overrides_apply_alone
  --skip network_faults_heal_during_chaos --skip restart_under_churn_floods_too
  --skip twenty_seeds_replay_bit_for_bit)

# Pass 2 selects pass 1's survivors by name, and a name carries its line: both passes must see
# the same tree. cargo-mutants copies the tree when each pass starts, so an edit made while pass
# 1 runs would silently make pass 2 test other mutants (or none).
tree_state() { git rev-parse HEAD; git diff HEAD -- src; }
start_state="$(tree_state)"

echo "==> pass 1: the simulation alone"
"${sim_env[@]}" cargo mutants "${common[@]}" --profile sim --test-package videoroom-sim \
  --timeout 240 --build-timeout 900 -o "$out/sim" "${extra[@]}" \
  -- -- "${skips[@]}" || true

echo "==> pass 2: the rest of the suite (tokio) on what pass 1 missed"
rm -rf "$out/tokio"
if [ "$(tree_state)" != "$start_state" ]; then
  echo "mutants.sh: src/ or HEAD changed while pass 1 ran; pass 2 would select other mutants." >&2
  echo "mutants.sh: skipping pass 2 (re-run it on the tree pass 1 saw)." >&2
  exit 1
fi
missed=()
while IFS= read -r m; do
  missed+=(--re "^$(printf '%s' "$m" | sed 's/[][\.^$|?*+(){}]/\\&/g')\$")
done <"$out/sim/mutants.out/missed.txt"
if [ ${#missed[@]} -gt 0 ]; then
  scripts/setup-node.sh
  # Its own target dir: test binaries built from cargo-mutants' temporary copy bake in that
  # copy's paths, and a later `cargo test` of the real tree would reuse them and fail.
  CARGO_TARGET_DIR="$target/mutants-tokio" cargo mutants "${common[@]}" "${missed[@]}" \
    --timeout 120 --build-timeout 600 -o "$out/tokio" "${extra[@]}" || true
fi

# The builds ran in cargo-mutants' copy of the tree but share the target dirs, and cargo can take
# their (last, mutated) artifacts for fresh afterwards: make the next normal build recompile.
touch src/lib.rs sim/src/lib.rs sim/src/main.rs

count() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
for pass in sim tokio; do
  d="$out/$pass/mutants.out"
  [ -d "$d" ] || continue
  echo "==> $pass"
  for k in caught missed timeout unviable; do
    printf '%-9s %s\n' "$k" "$(count "$d/$k.txt")"
    [ "$k" = missed ] && [ -s "$d/missed.txt" ] && per_file <"$d/missed.txt"
  done
done
d1="$out/sim/mutants.out" d2="$out/tokio/mutants.out"
viable=$(($(count "$d1/caught.txt") + $(count "$d1/missed.txt") + $(count "$d1/timeout.txt")))
sim_det=$(($(count "$d1/caught.txt") + $(count "$d1/timeout.txt")))
all_det=$((sim_det + $(count "$d2/caught.txt") + $(count "$d2/timeout.txt")))
if [ "$viable" -gt 0 ]; then
  awk -v v="$viable" -v s="$sim_det" -v a="$all_det" 'BEGIN {
    printf "detected by the simulation alone: %d of %d viable (%.0f%%); by the whole suite: %d (%.0f%%)\n",
      s, v, 100 * s / v, a, 100 * a / v }'
fi
