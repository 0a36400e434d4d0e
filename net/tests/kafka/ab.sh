#!/usr/bin/env bash
# Two builds side by side through measure.sh, alternating (A then B, ROUNDS times), so that
# their ratios come from the same minutes of a noisy machine (docs/performance.md, "Kafka
# listener vs the native protocol"). Both use LOADGEN (one native client for both). E.g.
#   A=/tmp/main/shardline B=target/release/shardline LOADGEN=/tmp/main/shardline-loadgen \
#   RDKPERF=target/rdkafka_performance ROUNDS=3 MSGS=2500000 SECS=10 net/tests/kafka/ab.sh
set -euo pipefail
: "${A:?A=<first shardline binary>}" "${B:?B=<second shardline binary>}"
for r in $(seq "${ROUNDS:-3}"); do
  for bin in "$A" "$B"; do
    echo "=== round $r build $bin $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    BIN=$bin REPEAT=1 bash "$(dirname "$0")/measure.sh"
  done
done
