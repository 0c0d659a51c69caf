#!/usr/bin/env bash
# Runs every check and test of the project, as CI does: the committed web bundle against its
# sources, formatting, lints (normal and simulation builds), the tokio test suite (with the
# headless-Chromium end-to-end test), the madsim simulation suite, and a short run of every
# fuzz target (scripts/fuzz.sh).
# Simulation builds (--cfg madsim) use their own target dir so the two builds don't
# invalidate each other. Honours CARGO_TARGET_DIR for a build cache outside the clone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export INSTA_UPDATE=no
target="${CARGO_TARGET_DIR:-$PWD/target}"
sim_env=(env RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target/sim")

step() { printf '\n==> %s\n' "$*"; }

step "node test drivers"
scripts/setup-node.sh

step "chromium and playwright-core for the browser end-to-end test"
scripts/setup-chromium.sh

step "etcd for the cluster's etcd integration and conformance tests"
scripts/setup-etcd.sh

step "web bundle matches its sources"
scripts/build-web.sh --check

step "cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --all --check

step "clippy (tokio build)"
cargo clippy --all-targets -- -D warnings

step "clippy (simulation build)"
"${sim_env[@]}" cargo clippy -p videoroom-sim --all-targets -- -D warnings

step "tests (tokio build)"
cargo test

step "hostile soak: join/publish/leave churn with malformed input, resources must come back"
cargo build --example sfu_bench
"$target/debug/examples/sfu_bench" soak --secs "${SOAK_SECS:-180}" --hostile --check --report-every 100

step "simulation tests (madsim build, release with debug assertions)"
"${sim_env[@]}" cargo test -p videoroom-sim --profile sim

step "fuzz targets, 10 s each (cargo-fuzz, own target dir \$target/fuzz)"
CARGO_TARGET_DIR="$target" scripts/fuzz.sh 10

step "all tests passed"
