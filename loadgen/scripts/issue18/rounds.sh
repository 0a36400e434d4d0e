#!/bin/bash
# Issue 18 measurement (docs/performance.md, "Issue 18: delivery and durable latency"). Copies of the
# scripts used in that sitting; paths: binaries in /tmp/pd-bin/{shardline,loadgen}-{before,after}, results in $OUT.
# Interleaved rounds: before/after x busy/quiet, + raw TCP ping-pong (net_rtt raw) per round.
A=/work/wt-perf-deliver/target/release
cp $A/shardline /tmp/pd-bin/shardline-after; cp $A/shardline-loadgen /tmp/pd-bin/loadgen-after
for r in 1 2 3; do
  for v in before after; do
    MPORT=19464 $(dirname $0)/e2e.sh /tmp/pd-bin/shardline-$v /tmp/pd-bin/loadgen-$v r$r-$v-busy 1 15s
    MPORT=19464 $(dirname $0)/e2e.sh /tmp/pd-bin/shardline-$v /tmp/pd-bin/loadgen-$v r$r-$v-quiet 0 15s
  done
  if [ -x $A/net_rtt ]; then
    echo "$(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" > ${OUT:-/tmp/pd-runs}/r$r-rtt.meta
    $A/net_rtt --phases raw --placements cross --spin-before-park-us 0 --count 10000 --json ${OUT:-/tmp/pd-runs}/r$r-rtt.jsonl > ${OUT:-/tmp/pd-runs}/r$r-rtt.out 2>&1
  fi
done
echo ROUNDS-DONE
