#!/usr/bin/env bash
# Mutation testing (cargo-mutants, `cargo install cargo-mutants --locked`) of the process
# runtime, the registry, room, channel and socket processes, the Phoenix socket core and the
# negotiation core. See HARNESS.md for the results and how to read them.
#
#   scripts/mutants.sh --list      the mutants per module, nothing built (a dry run)
#   scripts/mutants.sh             pass 1 and pass 2 below
#   scripts/mutants.sh -- ARGS     ARGS go to pass 1 (e.g. `-- --re registry`); pass 2 takes
#                                  pass 1's survivors by name
#   scripts/mutants.sh --tally     the whole scope's figure so far, from the ledger (below)
#   scripts/mutants.sh --undecided [N]
#                                  both passes on (the first N of) the mutants the ledger has
#                                  no verdict for: how the full scope is finished over sittings
#   scripts/mutants.sh --survivors [N]
#                                  pass 2 alone on (the first N of) the ledger's pass-1 survivors
#                                  with no pass-2 verdict, in two stages: the unit tests
#                                  (`cargo test --lib`, ~1 min a mutant) first, then the whole
#                                  suite (~4 min) on what they missed. MUTANTS_ONLY=FILE keeps
#                                  the survivors named in FILE (one name a line, e.g. those new
#                                  tests aim at); MUTANTS_WHOLE_STAGE=0 stops after the unit stage
#
# The ledger (sim/mutants/ledger.tsv, scripts/mutants_ledger.py) keeps every verdict of a run
# made on a clean src/, keyed by the file's git blob and the mutant's name: it stays valid until
# that file changes, so runs from different sittings add up to the full scope.
#
# Pass 1 runs the SIMULATION ALONE on every mutant: the madsim build (profile `sim-mutants`, the
# `sim` profile without fat LTO; package videoroom-sim), i.e. the test command's campaign,
# regression seeds, scenarios and registry race, without `pinned_trace_summaries` (it compares
# whole traces with snapshots, so it fails on any change of behaviour, equivalent or not, and
# would count every mutant as caught). Its score is the "simulation alone" figure.
# Pass 2 runs the rest of the suite (`cargo test`: unit tests and tests/it on real tokio) on the
# mutants pass 1 missed, selected by name (`--re`). A mutant is caught by the whole suite if
# either pass catches it; running pass 2 only on pass 1's survivors gives the same verdicts as
# running everything on every mutant, at a fraction of the cost.
#
# MUTANTS_FILES (default: the modules above, space-separated globs), MUTANTS_OUT (default
# $target/mutants) and MUTANTS_JOBS (default 1: the machine is shared) override. MUTANTS_PASSES
# (default "1 2") runs one pass alone: pass 2 reads pass 1's survivors from MUTANTS_OUT, so it
# can run later (in another sitting) as long as the tree is the one pass 1 saw.
#
# The whole scope is ~610 mutants, ~65 s each on 2 cores (11 hours): a sample is
# `scripts/mutants.sh -- --shard 1/6 --sharding round-robin` (every sixth mutant of every file).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

list=0
tally=0
undecided=""
survivors=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list=1 ;;
    --tally) tally=1 ;;
    --undecided)
      undecided=all
      if [[ "${2:-}" =~ ^[0-9]+$ ]]; then undecided="$2"; shift; fi ;;
    --survivors)
      survivors=all
      if [[ "${2:-}" =~ ^[0-9]+$ ]]; then survivors="$2"; shift; fi ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [--list | --tally | --undecided [N] | --survivors [N]] [-- cargo-mutants args]" >&2
       exit 1 ;;
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
  --jobs "${MUTANTS_JOBS:-1}"
  "${globs[@]}"
  # The harness's own code, not the product: the probe events and promise model the oracles
  # read, and the madsim seam of the runtime (production never runs it). Their mutants test the
  # oracles; HARNESS.md keeps them apart ("group A").
  -e src/rt/probe.rs -e src/rt/promises.rs -e src/rt/sim.rs
  # Replacements by constructors these types do not have (Addr::new(), MutexGuard::from(..),
  # Box::leak(Box::new(Entry::new())), ...): never compile; listed by `--list`, not built.
  --exclude-re '::new\(|::from\(|::from_iter\(|MutexGuard|Box::leak'
)
# The `sim-mutants` profile: the sim profile's checks without its fat LTO, built incrementally
# (cargo-mutants builds every mutant in one copy of the tree): a one-line mutant rebuilds in ~45 s
# on 2 cores instead of relinking the whole optimised world for 150-175 s.
# One failing seed is the verdict: campaigns stop at the first (VIDEOROOM_SIM_FAIL_FAST) instead
# of examining every failing seed of a mutant that breaks them all, and nextest's
# `--max-fail 1:immediate` ends the other tests at the first failing one (libtest would run every
# campaign of the binary to its end: ~60 s per caught mutant).
sim_env=(env RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target/sim" CARGO_PROFILE_SIM_INCREMENTAL=true
  VIDEOROOM_SIM_FAIL_FAST=1)

# Mutants per file from `cargo mutants --list` lines ("src/x.rs:12:5: replace ...").
per_file() { sed -E 's/:[0-9]+:[0-9]+: .*//' | sort | uniq -c | awk '{printf "  %-28s %5d\n", $2, $1; n += $1} END {printf "  %-28s %5d\n", "total", n}'; }

# A regex matching exactly one mutant's name (`--re` takes regexes; names hold `(`, `[`, `|`...).
exact_re() { printf '^%s$' "$(printf '%s' "$1" | sed 's/[][\.^$|?*+(){}]/\\&/g')"; }
ledger=sim/mutants/ledger.tsv
# src/ as the run sees it, by blob: what a verdict is attributed to. Only a clean src/ has one.
blobs() { git diff --quiet HEAD -- src && git ls-tree -r HEAD -- src; }
scope_tally() { # [undecided-out]
  local list="$out/scope.json"
  "${sim_env[@]}" cargo mutants "${common[@]}" --list --json >"$list"
  blobs >"$out/blobs.now" || { echo "mutants.sh: src/ has uncommitted changes; commit first" >&2; exit 1; }
  python3 scripts/mutants_ledger.py tally "$list" "$out/blobs.now" "$ledger" "$@"
}

# What the whole suite needs besides cargo (as scripts/test-all.sh installs it): without it in
# cargo-mutants' copy (gitignored npm packages are copied with --gitignore false) every mutant
# would look caught. The whole-suite runs also run cargo-mutants' baseline (the unmutated copy
# must pass), so anything still missing voids the run instead of faking catches.
whole_suite_needs() {
  scripts/setup-node.sh
  scripts/setup-chromium.sh
  scripts/setup-etcd.sh
}

# cargo-mutants exits 4 when the unmutated tree fails its tests: nothing it reports is a verdict.
baseline_failed() { # RC NAME
  if [ "$1" = 4 ]; then
    echo "mutants.sh: the unmutated tree fails the tests of $2 in cargo-mutants' copy; nothing recorded (see $out/$2/mutants.out/log/baseline.log)" >&2
    exit 1
  fi
}

if [ "$tally" = 1 ]; then
  scope_tally
  exit 0
fi

# Pass 2 by stages on the ledger's survivors. A catch by part of the suite is a catch by the
# whole suite, so the unit tests' catches are recorded as pass-2 verdicts; what they miss is only
# decided by the whole suite (tests/it on real tokio and the npm clients), run on the rest.
if [ -n "$survivors" ]; then
  scope_tally "$out/undecided.txt"
  todo=()
  while IFS= read -r m; do todo+=("$m"); done < <(
    if [ "$survivors" = all ]; then cat "$out/undecided.txt.tokio"
    else head -n "$survivors" "$out/undecided.txt.tokio"; fi |
      if [ -n "${MUTANTS_ONLY:-}" ]; then grep -xF -f "$MUTANTS_ONLY" || true; else cat; fi)
  if [ ${#todo[@]} -eq 0 ]; then
    echo "mutants.sh: every pass-1 survivor has a pass-2 verdict; nothing to run"
    exit 0
  fi
  cp "$out/blobs.now" "$out/survivors.blobs"
  state="$(git rev-parse HEAD:src)"
  commit="$(git rev-parse --short HEAD)"
  whole_suite_needs
  # Each stage runs cargo-mutants' baseline first (the unmutated copy must pass that stage's
  # tests), so a test that fails on the clean tree cannot make every mutant look caught.
  stage() { # NAME OUTCOMES [cargo test args...]; the mutants are in "${todo[@]}"
    local name="$1" outcomes="$2"; shift 2
    local res=() rc=0
    for m in "${todo[@]}"; do res+=(--re "$(exact_re "$m")"); done
    echo "==> pass 2, $name: ${#todo[@]} survivors"
    rm -rf "${out:?}/$name"
    CARGO_TARGET_DIR="$target/mutants-tokio" cargo mutants "${common[@]}" "${res[@]}" \
      --baseline run --timeout 1200 --build-timeout 900 -o "$out/$name" -- "$@" || rc=$?
    baseline_failed "$rc" "$name"
    if [ "$(git rev-parse HEAD:src)" != "$state" ] || ! git diff --quiet HEAD -- src; then
      echo "mutants.sh: src/ changed during the run; its verdicts are not recorded" >&2
      exit 1
    fi
    MUTANTS_COMMIT="$commit" python3 scripts/mutants_ledger.py record "$out/$name" tokio \
      "$out/survivors.blobs" "$ledger" $outcomes
  }
  # MUTANTS_UNIT_STAGE=0 skips the unit stage (it records catches only, so a rerun would try
  # the same misses again).
  if [ "${MUTANTS_UNIT_STAGE:-1}" != 0 ]; then
    # A mutant the library does not compile with is unviable for every test selection.
    stage tokio-unit caught,unviable --lib
    caught="$out/tokio-unit/mutants.out/caught.txt"
    rest=()
    for m in "${todo[@]}"; do
      # (No `cat | grep -q`: under pipefail grep's early exit fails the pipe and reads as a miss.)
      if ! grep -qsxF -- "$m" "$caught" "$out/tokio-unit/mutants.out/unviable.txt"; then
        rest+=("$m")
      fi
    done
    echo "mutants.sh: the unit stage decided $((${#todo[@]} - ${#rest[@]})) of ${#todo[@]} (caught, or unviable)"
    todo=("${rest[@]}")
  fi
  if [ ${#todo[@]} -gt 0 ] && [ "${MUTANTS_WHOLE_STAGE:-1}" != 0 ]; then
    stage tokio caught,missed,timeout,unviable
  fi
  touch src/lib.rs sim/src/lib.rs sim/src/main.rs
  scope_tally
  exit 0
fi

if [ -n "$undecided" ]; then
  scope_tally "$out/undecided.txt"
  picked=()
  while IFS= read -r m; do
    picked+=(--re "$(exact_re "$m")")
  done < <(if [ "$undecided" = all ]; then cat "$out/undecided.txt"; else head -n "$undecided" "$out/undecided.txt"; fi)
  if [ ${#picked[@]} -eq 0 ]; then
    echo "mutants.sh: every mutant in scope has a pass-1 verdict; nothing to run"
    exit 0
  fi
  echo "mutants.sh: running $((${#picked[@]} / 2)) undecided mutants"
  extra=("${picked[@]}" "${extra[@]}")
fi

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
# (src/ only: commits elsewhere, e.g. to HARNESS.md, do not move the lines.) Pass 1 writes the
# state it saw next to its results; pass 2 refuses another one.
tree_state() { git rev-parse HEAD:src; git diff HEAD -- src; }
start_state="$(tree_state)"
start_blobs="$(blobs || true)"

passes="${MUTANTS_PASSES:-1 2}"
if [[ " $passes " == *" 1 "* ]]; then
echo "==> pass 1: the simulation alone"
"${sim_env[@]}" cargo mutants "${common[@]}" --baseline skip --profile sim-mutants --test-package videoroom-sim \
  --test-tool nextest --timeout 240 --build-timeout 900 -o "$out/sim" "${extra[@]}" \
  -- --profile mutants -- "${skips[@]}" || true
if [ "$(tree_state)" = "$start_state" ]; then
  printf '%s\n' "$start_state" >"$out/sim/tree"
  if [ -n "$start_blobs" ]; then
    printf '%s\n' "$start_blobs" >"$out/sim/blobs"
    MUTANTS_COMMIT="$(git rev-parse --short HEAD)" \
      python3 scripts/mutants_ledger.py record "$out/sim" sim "$out/sim/blobs" "$ledger"
  else
    echo "mutants.sh: src/ had uncommitted changes: pass 1's verdicts are not recorded" >&2
  fi
else
  rm -f "$out/sim/tree"
fi
fi

if [[ " $passes " == *" 2 "* ]]; then
echo "==> pass 2: the rest of the suite (tokio) on what pass 1 missed"
rm -rf "$out/tokio"
if [ ! -f "$out/sim/tree" ] || [ "$(tree_state)" != "$(cat "$out/sim/tree")" ]; then
  echo "mutants.sh: src/ is not what pass 1 saw (or changed while it ran); pass 2 would select" >&2
  echo "mutants.sh: other mutants. Skipping pass 2 (run it on the tree pass 1 saw)." >&2
  exit 1
fi
missed=()
while IFS= read -r m; do
  missed+=(--re "$(exact_re "$m")")
done <"$out/sim/mutants.out/missed.txt"
if [ ${#missed[@]} -gt 0 ]; then
  whole_suite_needs
  # Its own target dir: test binaries built from cargo-mutants' temporary copy bake in that
  # copy's paths, and a later `cargo test` of the real tree would reuse them and fail.
  # MUTANTS_PASS2_ARGS narrows pass 2 (e.g. `--lib`: the unit tests alone, ~1 min a mutant
  # instead of ~4 with tests/it); the summary then says "with pass 2" for what it ran.
  read -r -a pass2_args <<<"${MUTANTS_PASS2_ARGS:-}"
  rc=0
  CARGO_TARGET_DIR="$target/mutants-tokio" cargo mutants "${common[@]}" "${missed[@]}" \
    --baseline run --timeout 1200 --build-timeout 900 -o "$out/tokio" -- "${pass2_args[@]}" || rc=$?
  baseline_failed "$rc" tokio
  # Only the whole of pass 2 (no narrowing) is a verdict of the whole suite.
  if [ -z "${MUTANTS_PASS2_ARGS:-}" ] && [ -f "$out/sim/blobs" ] && [ "$(tree_state)" = "$(cat "$out/sim/tree")" ]; then
    MUTANTS_COMMIT="$(git rev-parse --short HEAD)" \
      python3 scripts/mutants_ledger.py record "$out/tokio" tokio "$out/sim/blobs" "$ledger"
  fi
fi
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
# Pass 2 counts only what it caught of pass 1's survivors (extra `--re` arguments widen its
# selection), and not its timeouts: the tokio suite's own length, not the mutant, can cause one.
tokio_det=0
if [ -f "$d2/caught.txt" ]; then
  tokio_det=$(grep -cxFf "$d1/missed.txt" "$d2/caught.txt" || true)
  [ -s "$d2/timeout.txt" ] && echo "pass 2 timeouts (not counted; read each log): $(count "$d2/timeout.txt")"
fi
all_det=$((sim_det + tokio_det))
if [ "$viable" -gt 0 ]; then
  awk -v v="$viable" -v s="$sim_det" -v a="$all_det" 'BEGIN {
    printf "detected by the simulation alone: %d of %d viable (%.0f%%); with pass 2: %d (%.0f%%)\n",
      s, v, 100 * s / v, a, 100 * a / v }'
fi
