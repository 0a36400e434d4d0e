#!/bin/sh
# Before/after rounds of net_rtt, queue_bench and append_bench, alternating builds in each round
# so that both see the same minutes of a noisy machine (docs/performance.md, "Issue 18: client
# hand-off, DMA chunk pool, segment rolls").
# usage: bench/before-after.sh BEFORE_BIN_DIR AFTER_BIN_DIR OUT_DIR [ROUNDS] [rtt,queue,append]
# Each BIN_DIR holds release builds of net_rtt, queue_bench and append_bench.
set -eu
BEFORE=$1; AFTER=$2; OUT=$3; R=${4:-3}; WHAT=${5:-rtt,queue,append}
mkdir -p "$OUT"
for i in $(seq 1 "$R"); do
  for b in before after; do
    if [ $b = before ]; then BIN=$BEFORE; else BIN=$AFTER; fi
    echo "== round $i $b $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log"
    case ",$WHAT," in *,rtt,*)
      "$BIN/net_rtt" --dir /var/tmp --phases raw,shardline --placements cross \
        --spin-before-park-us 0 --count 10000 --warmup 2000 --sizes 100 \
        --json "$OUT/rtt-$b-$i.jsonl" > "$OUT/rtt-$b-$i.txt" 2>&1 ;; esac
    case ",$WHAT," in *,queue,*)
      "$BIN/queue_bench" --dir /var/tmp --messages 40000 --batches 1 --pipelined-batches 1 \
        > "$OUT/queue-$b-$i.txt" 2>&1 ;; esac
    case ",$WHAT," in *,append,*)
      /usr/bin/time -f "TIME %e s elapsed, %U user, %S sys, %R minor faults, %M maxrss KiB" \
        "$BIN/append_bench" --dir /var/tmp --phases leader --seconds 5 --json \
        > "$OUT/append-$b-$i.txt" 2>&1 ;; esac
  done
done
