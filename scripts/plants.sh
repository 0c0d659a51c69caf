#!/usr/bin/env bash
# Planted bugs: does the simulation catch them? See HARNESS.md ("Planted bugs") for the method
# and the figures.
#
#   scripts/plants.sh                      every patch in sim/plants/
#   scripts/plants.sh 05 sim/plants/17-*   only these (a number prefix or a path)
#   scripts/plants.sh --tokio 13 22        also run the tokio suite on the plants the
#                                          simulation missed (cargo test --lib, --test it)
#   scripts/plants.sh --tokio-only 13 22   only the tokio suite (for plants already measured)
#
# Each patch is applied to a scratch git worktree of HEAD under $PLANTS_OUT (the caller's
# working tree is never touched: commit what you want measured), the simulation test binary is
# built in its own target dir (reused, so every plant rebuilds incrementally), and the
# simulation suite runs exactly as the test command runs it (`cargo test -p videoroom-sim
# --profile sim`: sim/tests/campaign.rs's seeds, regression seeds and scenarios, and the
# registry race), except `pinned_trace_summaries`: that test compares whole traces with
# snapshots and fails on any change of behaviour, harmful or not, so it is a change detector,
# not an oracle. VIDEOROOM_SIM_CAMPAIGN and VIDEOROOM_SIM_SEEDS are passed through.
#
# A patch that no longer applies as is is merged three-way from the blobs it was made against
# ("(3-way)"), else applied with its context lines allowed to differ (`patch -F3`, "(fuzz)").
# Verdicts: caught (a test failed: first failing seed and its verdict kind when the output names
# one), caught-timeout (the suite ran past PLANTS_TIMEOUT: counted as caught, flagged), missed,
# stale (the patch applies no way), unviable (it does not build). Before the plants, the
# unplanted tree is run once (the baseline); if it fails, every "caught" is suspect and the
# script says so.
#
# Output: a table on stdout, $PLANTS_OUT/results.tsv and results.json (PLANTS_RESULTS=path.tsv
# for another name), logs in $PLANTS_OUT/logs.
# Environment: PLANTS_OUT (default target/plants), PLANTS_TIMEOUT (seconds per plant for the
# simulation suite, default 900), PLANTS_TOKIO_TIMEOUT (per tokio command, default 900),
# PLANTS_TOKIO_TESTS (default "lib it": the unit tests, then tests/it), PLANTS_REV (default
# HEAD), PLANTS_NO_BASELINE=1 to skip the baseline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

tokio=0
skip_sim=0
sel=()
for a in "$@"; do
  case "$a" in
    --tokio) tokio=1 ;;
    --tokio-only) tokio=1 skip_sim=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) sel+=("$a") ;;
  esac
done

out="${PLANTS_OUT:-$root/target/plants}"
mkdir -p "$out" "$out/logs"
out="$(cd "$out" && pwd)"
tree="$out/tree"
sim_target="$out/sim-target"
tokio_target="$out/tokio-target"
limit="${PLANTS_TIMEOUT:-900}"
tokio_limit="${PLANTS_TOKIO_TIMEOUT:-900}"
tokio_tests="${PLANTS_TOKIO_TESTS:-lib it}"
rev="$(git rev-parse "${PLANTS_REV:-HEAD}")"
export INSTA_UPDATE=no

# The patches to run, in name order.
patches=()
if [ ${#sel[@]} -eq 0 ]; then
  for p in "$root"/sim/plants/*.patch; do patches+=("$p"); done
else
  for s in "${sel[@]}"; do
    if [ -f "$s" ]; then
      patches+=("$(cd "$(dirname "$s")" && pwd)/$(basename "$s")")
    else
      found=("$root"/sim/plants/"$s"*.patch)
      [ -f "${found[0]}" ] || { echo "no plant matches $s" >&2; exit 1; }
      patches+=("${found[@]}")
    fi
  done
fi

# The scratch tree: a detached worktree at $rev, reset before every plant.
if [ ! -e "$tree/.git" ]; then
  git worktree prune
  git worktree add --detach "$tree" "$rev" >/dev/null
fi
reset_tree() {
  git -C "$tree" reset -q --hard
  git -C "$tree" clean -qfd
  git -C "$tree" checkout -q --detach "$rev"
}
reset_tree
# The wire tests drive the npm clients; the scratch tree borrows the caller's install.
if [ "$tokio" = 1 ] && [ -d "$root/tests/node/node_modules" ] && [ ! -e "$tree/tests/node/node_modules" ]; then
  ln -s "$root/tests/node/node_modules" "$tree/tests/node/node_modules"
fi

# Incremental compilation in the sim profile (own target dir only): a one-line plant then
# rebuilds in a fraction of the time; the optimisation level and debug assertions are the test
# command's.
# One failing seed is the verdict (VIDEOROOM_SIM_FAIL_FAST): a plant that breaks most worlds
# otherwise makes each campaign record and write up every failing seed.
sim_env=(env RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim" CARGO_TARGET_DIR="$sim_target"
  CARGO_PROFILE_SIM_INCREMENTAL=true VIDEOROOM_SIM_FAIL_FAST=1)
sim_test=(cargo test -p videoroom-sim --profile sim)

# Runs the simulation suite in $tree; sets run_rc, run_secs; log in $1.
run_sim() {
  local log="$1" t0
  t0=$(date +%s)
  set +e
  (cd "$tree" && timeout -k 20 "$limit" "${sim_env[@]}" "${sim_test[@]}" -- --skip pinned_trace_summaries) >"$log" 2>&1
  run_rc=$?
  set -e
  run_secs=$(($(date +%s) - t0))
}

# What a failing run says: the failing tests, the first failing seed and its verdict kind.
# The campaign prints a JSON summary line with "failing": [{"seed", "why"}]; a seed's verdict
# text starts with its kind (CRASH/SAFETY/LIVENESS).
describe_failure() {
  local log="$1" tests seed why kind
  tests=$(grep -E '^test .* \.\.\. FAILED$' "$log" | awk '{print $2}' | sed 's/.*:://' | paste -sd, -)
  seed="" why=""
  while IFS= read -r line; do
    seed=$(jq -r '.failing[0].seed // empty' <<<"$line" 2>/dev/null || true)
    if [ -n "$seed" ]; then
      why=$(jq -r '.failing[0] | (.why // .detail // .verdict // .kind // "") | tostring' <<<"$line")
      break
    fi
  done < <(grep -E '^\{.*"failing"' "$log" || true)
  if [ -z "$seed" ]; then
    # Fall back on the human-readable list ("  seed N: VERDICT").
    line=$(grep -m1 -E '^ +seed [0-9]+: ' "$log" || true)
    seed=$(sed -E 's/^ +seed ([0-9]+): .*/\1/' <<<"$line")
    why=$(sed -E 's/^ +seed [0-9]+: //' <<<"$line")
  fi
  case "$(tr '[:lower:]' '[:upper:]' <<<"$why")" in
    CRASH*) kind=crash ;;
    SAFETY*) kind=safety ;;
    LIVENESS*) kind=liveness ;;
    "") kind=- ;;
    *) kind=other ;;
  esac
  if [ -z "$seed" ]; then
    # No seed: a scenario's own assertion, determinism, exit codes, or a panic in the test.
    why=$(grep -m1 -E "panicked at|assertion" "$log" -A2 | tr '\n' ' ' | cut -c1-200 || true)
    seed=-
  fi
  why=$(tr '\t\n' '  ' <<<"$why" | cut -c1-200)
  printf '%s\t%s\t%s\t%s' "${tests:--}" "$seed" "$kind" "${why:--}"
}

meta() { # class and module from a patch's header and diff
  local p="$1" class module
  class=$(grep -m1 '^# Class:' "$p" | sed -E 's/^# Class: *//; s/^([0-9]+|other).*/\1/')
  module=$(grep -m1 '^+++ b/' "$p" | sed 's|^+++ b/||')
  printf '%s\t%s' "${class:-?}" "${module:-?}"
}

# The rest of the suite (unit tests, then the wire tests on real tokio) in $tree; prints
# "missed", "caught(<tests>)" for tests that fail here but not on the unplanted tree, or
# "caught-timeout(<command>)". Logs go to $1.tokio-*.log.
run_tokio() {
  local log="$1" t rc failed new
  for t in $tokio_tests; do
    local args=(--lib)
    [ "$t" = it ] && args=(--test it)
    set +e
    (cd "$tree" && CARGO_TARGET_DIR="$tokio_target" timeout -k 20 "$tokio_limit" \
      cargo test "${args[@]}") >"$log.tokio-$t.log" 2>&1
    rc=$?
    set -e
    [ "$rc" = 0 ] && continue
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      echo "caught-timeout($t)"
      return
    fi
    failed=$(grep -E '^test .* \.\.\. FAILED$' "$log.tokio-$t.log" | awk '{print $2}' | sort -u)
    [ -n "$failed" ] || failed="(build or harness: see log)"
    new=$(comm -23 <(printf '%s\n' "$failed") <(printf '%s\n' "${tokio_baseline[@]}" | sort -u))
    if [ -n "$new" ]; then
      echo "caught($(sed 's/.*:://' <<<"$new" | paste -sd, -))"
      return
    fi
  done
  echo missed
}

tokio_baseline=()
if [ "$tokio" = 1 ]; then
  echo "==> tokio baseline: cargo test ($tokio_tests) on the unplanted tree"
  for t in $tokio_tests; do
    args=(--lib)
    [ "$t" = it ] && args=(--test it)
    (cd "$tree" && CARGO_TARGET_DIR="$tokio_target" timeout -k 20 "$tokio_limit" \
      cargo test "${args[@]}") >"$out/logs/baseline.tokio-$t.log" 2>&1 || true
    while IFS= read -r f; do tokio_baseline+=("$f"); done \
      < <(grep -E '^test .* \.\.\. FAILED$' "$out/logs/baseline.tokio-$t.log" | awk '{print $2}')
  done
  echo "tokio baseline: ${#tokio_baseline[@]} failing tests${tokio_baseline[*]:+ (${tokio_baseline[*]}; not counted as catches)}"
fi

if [ "${PLANTS_NO_BASELINE:-0}" != 1 ] && [ "$skip_sim" = 0 ]; then
  echo "==> baseline: the simulation suite on the unplanted tree ($rev)"
  if ! (cd "$tree" && "${sim_env[@]}" "${sim_test[@]}" --no-run) >"$out/logs/baseline.build.log" 2>&1; then
    echo "baseline does not build; see $out/logs/baseline.build.log" >&2
    exit 1
  fi
  run_sim "$out/logs/baseline.run.log"
  if [ "$run_rc" != 0 ]; then
    echo "WARNING: the unplanted tree FAILS the simulation suite (rc $run_rc, ${run_secs}s):" \
      "$(describe_failure "$out/logs/baseline.run.log")"
    echo "WARNING: 'caught' below cannot be told apart from that failure; fix main first."
  else
    echo "baseline ok in ${run_secs}s"
  fi
fi

tsv="${PLANTS_RESULTS:-$out/results.tsv}"
printf 'plant\tclass\tmodule\tverdict\tfailing_tests\tfirst_seed\tkind\tdetail\tbuild_s\trun_s\ttokio\n' >"$tsv"
n=0
for p in "${patches[@]}"; do
  n=$((n + 1))
  name=$(basename "$p" .patch)
  log="$out/logs/$name"
  printf '[%d/%d] %-50s ' "$n" "${#patches[@]}" "$name"
  reset_tree
  verdict="" detail=$'-\t-\t-\t-' build_s=0 run_s=0 tokio_v=-
  how=""
  if ! git -C "$tree" apply "$p" 2>"$log.apply.log"; then
    # The code changed around the patch since it was written (e.g. probe lines added
    # nearby): a three-way merge from the blobs it was made against.
    reset_tree
    if git -C "$tree" apply --3way "$p" >>"$log.apply.log" 2>&1; then
      how=" (3-way)"
    else
      # Adjacent lines changed (a 3-way conflict): let the context lines differ.
      reset_tree
      if (cd "$tree" && patch -p1 -F3 --no-backup-if-mismatch -s) <"$p" >>"$log.apply.log" 2>&1; then
        how=" (fuzz)"
      else
        verdict=stale
      fi
    fi
  fi
  if [ "$verdict" != stale ]; then
    t0=$(date +%s)
    if [ "$skip_sim" = 1 ]; then
      verdict=not-run
    elif ! (cd "$tree" && "${sim_env[@]}" "${sim_test[@]}" --no-run) >"$log.build.log" 2>&1; then
      verdict=unviable
    fi
    build_s=$(($(date +%s) - t0))
    if [ -z "$verdict" ]; then
      run_sim "$log.run.log"
      run_s=$run_secs
      case "$run_rc" in
        0) verdict=missed ;;
        124 | 137) verdict=caught-timeout ;;
        *)
          verdict=caught
          detail=$(describe_failure "$log.run.log")
          ;;
      esac
    fi
    if [ "$tokio" = 1 ] && { [ "$verdict" = missed ] || [ "$verdict" = not-run ]; }; then
      t0=$(date +%s)
      tokio_v=$(run_tokio "$log")
      tokio_v="$tokio_v in $(($(date +%s) - t0))s"
    fi
  fi
  printf '%-15s build %4ss run %4ss%s' "$verdict" "$build_s" "$run_s" "$how"
  [ "$tokio_v" = - ] || printf '  tokio: %s' "$tokio_v"
  [ "$verdict" = caught ] && printf '  %s' "$(cut -f2,3 <<<"$detail" | tr '\t' ' ')"
  echo
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$(meta "$p")" "$verdict" "$detail" \
    "$build_s" "$run_s" "$tokio_v" >>"$tsv"
done
reset_tree

# results.json: the same rows.
jq -R -s 'split("\n") | map(select(length > 0) | split("\t")) | .[0] as $h
  | .[1:] | map([$h, .] | transpose | map({(.[0]): .[1]}) | add)' "$tsv" >"${tsv%.tsv}.json"

echo
column -t -s $'\t' < <(cut -f1,2,4,6,7,11 "$tsv")
echo
awk -F'\t' 'NR > 1 {
    v = $4; if (v == "caught-timeout") v = "caught"
    total[v]++; all++
    if (v == "caught" || v == "missed") {
      cls[$2 "\t" v]++; classes[$2] = 1
      m = $3; sub(/\/[^\/]*$/, "", m); if ($3 ~ /socket\.rs|tracks\.rs|session\.rs|mailbox\.rs|process\.rs/) m = $3
      mod[m "\t" v]++; mods[m] = 1
    }
  }
  END {
    viable = total["caught"] + total["missed"]
    printf "caught by the simulation: %d of %d viable plants (%.0f%%); %d missed, %d stale, %d unviable\n",
      total["caught"], viable, viable ? 100 * total["caught"] / viable : 0,
      total["missed"], total["stale"], total["unviable"]
    print "by class:"
    for (c in classes) printf "  %-8s caught %d, missed %d\n", c, cls[c "\tcaught"], cls[c "\tmissed"]
    print "by module:"
    for (m in mods) printf "  %-28s caught %d, missed %d\n", m, mod[m "\tcaught"], mod[m "\tmissed"]
  }' "$tsv"
echo "results: $tsv, ${tsv%.tsv}.json; logs: $out/logs"
