#!/usr/bin/env bash
# Kafka listener vs native protocol, same server, same workload (docs/performance.md).
# Run from the repository root after `cargo build --release -p shardline-net --bin shardline` and `cargo build --release
# -p shardline-loadgen --bin shardline-loadgen`; needs python3 with confluent-kafka, and bc.
set -euo pipefail
BIN=${BIN:-target/release/shardline}
LOADGEN=${LOADGEN:-target/release/shardline-loadgen}
SECS=${SECS:-10}
DIR=$(mktemp -d)
$BIN serve --data-dir "$DIR/data" --listen 127.0.0.1:0 --shards 2 --metrics-listen 127.0.0.1:0 \
  --kafka-listen 127.0.0.1:0 > "$DIR/out" 2>/dev/null &
PID=$!
trap 'kill $PID; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do [ "$(wc -l < "$DIR/out")" -ge 2 ] && break; sleep 0.1; done
NA=$(sed -n 's/shardline listening on //p' "$DIR/out"); KA=$(sed -n 's/kafka listening on //p' "$DIR/out")
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
TCK=$(getconf CLK_TCK)
$BIN --addr "$NA" topic create k1 --partitions 1 >/dev/null
$BIN --addr "$NA" topic create k4 --partitions 4 >/dev/null
for n in 1 4; do
  c0=$(cpu)
  out=$(python3 net/tests/kafka/perf_produce.py "$KA" "k$n" "$SECS" 1024 "$n")
  c1=$(cpu)
  msgs=$(echo "$out" | sed -n 's/.*msgs=\([0-9]*\).*/\1/p')
  echo "kafka  producers=$n partitions=$n $out server_cpu_s=$(echo "scale=2; ($c1-$c0)/$TCK" | bc) cpu_us_per_msg=$(echo "scale=2; ($c1-$c0)*1000000/$TCK/$msgs" | bc)"
  c0=$(cpu)
  out=$($LOADGEN --addr "$NA" --producers "$n" --consumers 0 --partitions "$n" --message-size 1024 \
        --batch 64 --acks durable --duration "${SECS}s" --warmup 0s --json "$DIR/n$n.json" 2>&1 | tail -25)
  c1=$(cpu)
  msgs=$(python3 -c "import json,sys; d=json.load(open('$DIR/n$n.json')); print(d.get('acked') or d.get('produced') or d['summary']['acked'])" 2>/dev/null || echo 0)
  echo "native producers=$n partitions=$n msgs=$msgs server_cpu_s=$(echo "scale=2; ($c1-$c0)/$TCK" | bc)"
  echo "$out" | grep -iE "msg/s|msgs/s|throughput|p50|p99|acked" | head -8
done
