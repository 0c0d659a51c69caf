#!/usr/bin/env bash
# Janus VideoRoom and this server side by side under the same synthetic load (BENCHMARKS.md,
# "Janus side by side"): for each peer count, one run of each, interleaved, so the machine's
# noise falls on both. Builds both examples in release mode first; needs root (janus_bench
# makes its own network namespace) and Debian's janus (scripts/setup-janus.sh).
#
#   scripts/bench-janus.sh                  1 room of 4, 8, 12 and 16 peers, 10 s windows
#   BENCH_PEERS="12 20" BENCH_REPEAT=3 scripts/bench-janus.sh
#
# Environment: BENCH_PEERS (default "4 8 12 16"), BENCH_REPEAT (rounds, default 1),
# BENCH_SECS (window, default 10), BENCH_OUT (default target/bench-janus: one log per run).
# Prints one table row per run: the figures each benchmark reports for itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { printf 'bench-janus.sh: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "janus_bench needs root for its network namespace"
command -v janus >/dev/null 2>&1 || die "janus not installed: run scripts/setup-janus.sh"

peers=${BENCH_PEERS:-4 8 12 16}
repeat=${BENCH_REPEAT:-1}
secs=${BENCH_SECS:-10}
out=${BENCH_OUT:-target/bench-janus}
mkdir -p "$out"

cargo build --release --example sfu_bench --example janus_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples

echo "| run | server | peers | fwd pkt/s | loss | server CPU | µs / fwd pkt | latency p50 / p99 ms | load |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$repeat"); do
  for m in $peers; do
    for what in janus janus-1loop ours; do
      log="$out/$what-$m-$round.txt"
      load=$(cut -d' ' -f1 /proc/loadavg)
      case $what in
        janus) "$bin/janus_bench" --rooms 1 --peers "$m" --secs "$secs" >"$log" 2>&1 || true ;;
        janus-1loop) "$bin/janus_bench" --rooms 1 --peers "$m" --secs "$secs" --event-loops 1 >"$log" 2>&1 || true ;;
        ours) "$bin/sfu_bench" run --rooms 1 --peers "$m" --secs "$secs" >"$log" 2>&1 || true ;;
      esac
      fwd=$(grep -m1 -o 'received by clients): [0-9]* (ideal [0-9]*)' "$log" | sed 's/received by clients): //' || true)
      loss=$(grep -m1 -o 'lost [0-9]* ([0-9.]* %)' "$log" | sed 's/.*(\(.*\))/\1/' || true)
      cpu=$(grep -m1 -o 'CPU: [0-9.]* % of a core' "$log" | sed 's/CPU: //; s/ of a core//' || true)
      us=$(grep -m1 -o '[0-9.]* µs per forwarded packet' "$log" | cut -d' ' -f1 || true)
      lat=$(grep -m1 -o 'p50 [0-9.]* p99 [0-9.]*' "$log" | sed 's/p50 //; s/ p99 / \/ /' || true)
      echo "| $round | $what | $m | ${fwd:-failed} | ${loss:--} | ${cpu:--} | ${us:--} | ${lat:--} | $load |"
    done
  done
done
echo "logs: $out"
