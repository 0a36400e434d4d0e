#!/bin/bash
# Cost of the consumer-group and work-queue families on a scrape (docs/performance.md,
# "Operations: scrape cost of the group and queue families"): one release server; 50 scrapes
# with only a topic of 8 partitions (the yardstick), then again after GROUPS groups have
# committed offsets on all 8 partitions (via `group reset-offsets`) and QUEUES queues of 2
# partitions (each with its dead-letter queue) hold MESSAGES messages each. Needs curl.
set -u
BIN=${CARGO_TARGET_DIR:-target}/release
GROUPS_N=${GROUPS_N:-200}; QUEUES=${QUEUES:-20}; MESSAGES=${MESSAGES:-1000}
OUT=${OUT:-target/scrape-families}; rm -rf $OUT; mkdir -p $OUT
D=$(mktemp -d /var/tmp/slbench.XXXX)
$BIN/shardline serve --data-dir $D --listen 127.0.0.1:0 --shards 2 --metrics-listen 127.0.0.1:0 > $OUT/serve.out 2> $OUT/serve.err &
SPID=$!
for i in $(seq 50); do [ -s $OUT/serve.out ] && break; sleep 0.1; done
A=$(sed 's/shardline listening on //' $OUT/serve.out)
M=$(grep -o 'metrics endpoint listening addr=[0-9.:]*' $OUT/serve.err | sed 's/.*addr=//')
sl() { $BIN/shardline --addr $A "$@"; }
scrapes() {
  for i in $(seq 50); do curl -s -o /dev/null -w '%{time_total}\n' http://$M/metrics; done | sort -n |
    awk -v what="$1" -v bytes="$(curl -s http://$M/metrics | wc -c)" -v series="$(curl -s http://$M/metrics | grep -vc '^#')" \
      '{a[NR]=$1} END {printf "%-28s series %6d  bytes %8d  scrape p50 %.2f ms  p90 %.2f ms  max %.2f ms\n", what, series, bytes, a[int(NR/2)+1]*1000, a[int(NR*0.9)]*1000, a[NR]*1000}'
}
sl topic create t --partitions 8 > /dev/null
seq 1000 | sl produce t > /dev/null
scrapes "topic only (yardstick)"
for g in $(seq $GROUPS_N); do sl group reset-offsets g$g --topic t --to-earliest > /dev/null; done
scrapes "+ $GROUPS_N groups x 8 partitions"
for q in $(seq $QUEUES); do
  sl queue create q$q --partitions 2 > /dev/null
  seq $MESSAGES | sl queue send q$q > /dev/null
done
scrapes "+ $QUEUES queues x 2 (+ DLQs)"
kill $SPID; wait $SPID
rm -rf $D
