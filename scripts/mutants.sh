#!/usr/bin/env bash
# Mutation testing (cargo-mutants, `cargo install cargo-mutants`) of the registry, room and
# channel modules against both test suites. See HARNESS.md for the results and how to read them.
#
# Pass 1 runs the tokio suite (`cargo test`: unit tests and tests/it) on every mutant. Pass 2
# runs the simulation suite (madsim build, profile `sim`, package videoroom-sim) only on the
# mutants pass 1 missed, selected by name (`--re`). A mutant is caught if either suite fails on
# it. One job at a time; builds use the usual target dirs ($target and $target/sim).
#
# MUTANTS_FILES (default: the three modules) and MUTANTS_OUT (default: $target/mutants) override.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target="${CARGO_TARGET_DIR:-$PWD/target}"
out="${MUTANTS_OUT:-$target/mutants}"
read -r -a files <<<"${MUTANTS_FILES:-src/registry/** src/room/** src/channel/**}"
globs=()
for f in "${files[@]}"; do globs+=(-f "$f"); done
common=(
  --gitignore false # the copy needs tests/node/node_modules (gitignored)
  --jobs 1 --baseline skip
  "${globs[@]}"
  # Replacements by constructors these types do not have (Addr::new(), MutexGuard::from(..),
  # Box::leak(Box::new(Entry::new())), ...): never compile; listed by `--list`, not built.
  --exclude-re '::new\(|::from\(|::from_iter\(|MutexGuard|Box::leak'
)

scripts/setup-node.sh

echo "==> pass 1: tokio suite"
CARGO_TARGET_DIR="$target" cargo mutants "${common[@]}" \
  --timeout 120 --build-timeout 400 -o "$out/normal" || true

echo "==> pass 2: simulation suite on what pass 1 missed"
rm -rf "$out/sim"
missed=()
while IFS= read -r m; do
  missed+=(--re "^$(printf '%s' "$m" | sed 's/[][\.^$|?*+(){}]/\\&/g')\$")
done <"$out/normal/mutants.out/missed.txt"
if [ ${#missed[@]} -gt 0 ]; then
  # pinned_trace_summaries compares whole traces with snapshots: it fails on any change of
  # behaviour, equivalent or not, so it is left out of the mutant verdicts.
  env RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target/sim" cargo mutants "${common[@]}" \
    "${missed[@]}" --profile sim --test-package videoroom-sim \
    --timeout 300 --build-timeout 900 -o "$out/sim" -- -- --skip pinned_trace_summaries || true
fi

# The builds ran in cargo-mutants' copy of the tree but share the target dirs, and cargo can take
# their (last, mutated) artifacts for fresh afterwards: make the next normal build recompile.
touch src/lib.rs sim/src/lib.rs sim/src/main.rs

for pass in normal sim; do
  [ -d "$out/$pass/mutants.out" ] || continue
  echo "==> $pass"
  for k in caught missed timeout unviable; do
    printf '%-9s %s\n' "$k" "$(wc -l <"$out/$pass/mutants.out/$k.txt")"
  done
done
