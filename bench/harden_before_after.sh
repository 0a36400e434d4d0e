#!/usr/bin/env bash
# Issue 16 item 5 (docs/performance.md "Cost of the budget accounting"): release builds of the
# tree before issue 16 (e7896cf) and after, alternated. BIN holds before/ and after/, each with
# net_rtt, shardline and shardline-loadgen (the before loadgen drives both servers).
set -u
BIN=${BIN:-/work/h16}; OUT=${OUT:-$BIN/results}; mkdir -p $OUT
echo "load at start: $(cat /proc/loadavg)"
for r in 1 2 3; do
  for t in before after; do
    $BIN/$t/net_rtt --dir /var/tmp --phases raw,shardline --placements cross --spin-before-park-us 0 --count 20000 --warmup 2000 --sizes 100 --json $OUT/rtt-$t-$r.json > $OUT/rtt-$t-$r.txt 2>&1
    D=/var/tmp/h16-$t; rm -rf $D; mkdir -p $D
    $BIN/$t/shardline serve --data-dir $D --listen 127.0.0.1:17170 --metrics-listen 127.0.0.1:0 --shards 2 > $OUT/serve-$t-$r.log 2>&1 &
    SP=$!
    for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/17170) 2>/dev/null && break; sleep 0.1; done
    $BIN/before/shardline-loadgen --driver shardline --addr 127.0.0.1:17170 --duration 20s --warmup 2s \
      --message-size 100 --batch 32 --inflight 16 --partitions 4 --producers 2 --consumers 2 \
      --acks leader --no-pin > $OUT/lg-$t-$r.txt 2>&1
    kill $SP; wait $SP; rm -rf $D
    echo "round $r $t done $(cat /proc/loadavg)"
  done
done
echo "load at end: $(cat /proc/loadavg)"
