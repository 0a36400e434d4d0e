#!/bin/sh
# Append latency around segment rolls, before/after builds alternating in each round, with fio
# yardsticks run in the same round (docs/performance.md, "Issue 18: client hand-off, DMA chunk
# pool, segment rolls", part 3). 1 MiB segments and 64 KiB batches one at a time: a roll every
# 16 appends. Summarise with bench/roll-latency-summary.py OUT_DIR.
# usage: [APPEND_ARGS="..."] bench/roll-latency.sh BEFORE_BIN_DIR AFTER_BIN_DIR OUT_DIR [ROUNDS] [DATA_DIR]
# Each BIN_DIR holds a release build of append_bench; DATA_DIR must be on the disk under test.
set -eu
BEFORE=$1; AFTER=$2; OUT=$3; R=${4:-3}; D=${5:-/var/tmp}
mkdir -p "$OUT"
F="$D/roll-latency-fio-$$"
for i in $(seq 1 "$R"); do
  echo "== round $i fio $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log"
  # Yardsticks: one 64 KiB O_DIRECT append past the end of the file at a time, durable
  # (O_DSYNC: the write and its sync in one operation) and not.
  fio --name=dsync64k --filename="$F" --ioengine=io_uring --direct=1 --bs=64k --rw=write \
    --sync=dsync --fallocate=none --size=96m --output-format=json > "$OUT/fio-dsync-$i.json"
  rm -f "$F"
  fio --name=write64k --filename="$F" --ioengine=io_uring --direct=1 --bs=64k --rw=write \
    --fallocate=none --size=96m --output-format=json > "$OUT/fio-nosync-$i.json"
  rm -f "$F"
  for b in before after; do
    if [ $b = before ]; then BIN=$BEFORE; else BIN=$AFTER; fi
    echo "== round $i $b $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log"
    "$BIN/append_bench" --dir "$D" --phases roll-durable,roll-leader --segment-mib 1 \
      --roll-batch-kib 64 --roll-count 1500 --json ${APPEND_ARGS:-} \
      > "$OUT/roll-$b-$i.jsonl" 2> "$OUT/roll-$b-$i.txt"
  done
done
