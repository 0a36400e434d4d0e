#!/usr/bin/env bash
# Kafka listener vs native protocol, same server, same workload (docs/performance.md, "Kafka
# listener vs the native protocol"): 1 KiB messages, batches of 64, acks=all / `durable`, at
# most 5 requests in flight per producer; 1 producer on 1 partition, then 4 producers on 4
# partitions (one process / connection per producer, each on its own partition).
#
# Kafka client: librdkafka's own rdkafka_performance (build it with build_rdkafka_performance.sh;
# CLIENT=python uses the older confluent-kafka script perf_produce.py instead). Native client:
# shardline-loadgen. Per run: messages, msgs/s, server CPU per message (utime + stime of the
# server process from /proc/PID/stat around the run) and the client's own CPU (user + sys of the
# client processes). Run from the repository root after
#   cargo build --release -p shardline-net --bin shardline -p shardline-loadgen --bin shardline-loadgen
#   LIBRDKAFKA_SRC=... net/tests/kafka/build_rdkafka_performance.sh
# with e.g. `MSGS=1000000 SECS=10 net/tests/kafka/measure.sh` (`WORKLOADS=1` for 1 producer only;
# `BIN=... LOADGEN=...` for another build). Needs bc and python3.
# Each run prints one line. Server CPU per message includes the fsync and wake-up costs a group
# commit shares among its messages, so compare runs of similar throughput.
set -euo pipefail
BIN=${BIN:-target/release/shardline}
LOADGEN=${LOADGEN:-target/release/shardline-loadgen}
RDKPERF=${RDKPERF:-target/rdkafka_performance}
CLIENT=${CLIENT:-rdkafka_performance}
SECS=${SECS:-10}          # native run length; the python client's too
MSGS=${MSGS:-1000000}     # messages per rdkafka_performance producer
SHARDS=${SHARDS:-2}
DIR=$(mktemp -d)
$BIN serve --data-dir "$DIR/data" --listen 127.0.0.1:0 --shards "$SHARDS" --metrics-listen 127.0.0.1:0 \
  --kafka-listen 127.0.0.1:0 > "$DIR/out" 2>/dev/null &
PID=$!
trap 'kill $PID; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do [ "$(wc -l < "$DIR/out")" -ge 2 ] && break; sleep 0.1; done
NA=$(sed -n 's/shardline listening on //p' "$DIR/out"); KA=$(sed -n 's/kafka listening on //p' "$DIR/out")
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
# CPU ticks of each shard's threads ("shard-N-..."), and the seconds each used between two readings:
# shows which shard served a run (a Kafka connection on the partition's shard, or two busy shards).
shard_ticks() {
  for t in /proc/$PID/task/*; do
    case $(cat "$t/comm") in shard-*) echo "$(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat")" ;; esac
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
shard_cpu() { join <(echo "$1") <(echo "$2") | awk -v t="$TCK" '{printf "%s%s=%.2fs", (NR>1?",":""), $1, ($3-$2)/t}'; }
us_per_msg() { echo "scale=2; $1*1000000/$TCK/$2" | bc; }
now_ms() { date +%s%3N; }
echo "date=$(date -u +%FT%TZ) load=$(cut -d' ' -f1-3 /proc/loadavg) shards=$SHARDS client=$CLIENT"
$BIN --addr "$NA" topic create k1 --partitions 1 >/dev/null
$BIN --addr "$NA" topic create k4 --partitions 4 >/dev/null
TIMEFORMAT='%3U %3S'
# One run through the Kafka listener: $1 producers (= partitions), $2 msgs/s per producer
# (0 = as fast as it goes, $MSGS messages each; else $SECS seconds' worth).
kafka_run() {
  local n=$1 rate=$2 count=$MSGS rflag=() c0 c1 t0 wall_ms msgs cu cs
  if [ "$rate" != 0 ]; then count=$((rate * SECS)); rflag=(-r "$rate"); fi
  c0=$(cpu); s0=$(shard_ticks)
  if [ "$CLIENT" = python ]; then
    { time python3 net/tests/kafka/perf_produce.py "$KA" "k$n" "$SECS" 1024 "$n" > "$DIR/k.out"; } 2> "$DIR/k.time"
    msgs=$(sed -n 's/.*msgs=\([0-9]*\).*/\1/p' "$DIR/k.out"); wall_ms=$((SECS * 1000))
  else
    t0=$(now_ms)
    { time (
      for p in $(seq 0 $((n - 1))); do
        $RDKPERF -P -t "k$n" -p "$p" -b "$KA" -s 1024 -c "$count" "${rflag[@]}" -a -1 -q \
          -X linger.ms=1 -X batch.num.messages=64 -X max.in.flight=5 \
          -X queue.buffering.max.messages=100000 > "$DIR/k$p.out" 2>&1 &
      done
      wait
    ); } 2> "$DIR/k.time"
    wall_ms=$(($(now_ms) - t0))
    msgs=$(for p in $(seq 0 $((n - 1))); do sed -n 's/.* \([0-9]*\) delivered (offset.*/\1/p' "$DIR/k$p.out" | tail -1; done | paste -sd+ | bc)
  fi
  c1=$(cpu)
  read -r cu cs < "$DIR/k.time"
  echo "kafka  producers=$n rate_per_producer=$rate msgs=$msgs msgs_per_s=$((msgs * 1000 / wall_ms)) server_cpu_s=$(echo "scale=2; ($c1-$c0)/$TCK" | bc) server_cpu_us_per_msg=$(us_per_msg $((c1 - c0)) "$msgs") client_cpu_s=$(echo "$cu + $cs" | bc) shard_cpu=$(shard_cpu "$s0" "$(shard_ticks)")"
}
# The same workload through the native listener with shardline-loadgen (not pinned to cores:
# on a shared 2-core machine a pinned client waits for its core).
native_run() {
  local n=$1 rate=$2 rflag=() c0 c1 cu cs
  if [ "$rate" != 0 ]; then rflag=(--rate $((rate * n))); fi
  c0=$(cpu); s0=$(shard_ticks)
  { time $LOADGEN --addr "$NA" --producers "$n" --consumers 0 --partitions "$n" --message-size 1024 \
      --batch 64 --inflight 5 --acks durable --duration "${SECS}s" --warmup 0s --no-pin "${rflag[@]}" \
      --json "$DIR/n.json" > "$DIR/n.out" 2>&1; } 2> "$DIR/n.time"
  c1=$(cpu); s1=$(shard_ticks)
  read -r cu cs < "$DIR/n.time"
  python3 - "$DIR/n.json" "$n" "$rate" "$(echo "scale=2; ($c1-$c0)/$TCK" | bc)" "$((c1 - c0))" "$TCK" "$(echo "$cu + $cs" | bc)" "$(shard_cpu "$s0" "$s1")" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
n, rate, cpu_s, ticks, tck, client, shards = sys.argv[2:]
msgs = d["acked"]
lat = d["publish_latency_us"]
print(f"native producers={n} rate_per_producer={rate} msgs={msgs} msgs_per_s={int(d['throughput_msgs_per_s'])} "
      f"server_cpu_s={cpu_s} server_cpu_us_per_msg={int(ticks) * 1e6 / int(tck) / max(msgs, 1):.2f} "
      f"client_cpu_s={client} publish_p50_us={lat['p50']} p99_us={lat['p99']} shard_cpu={shards}")
PY
}
# Closed loop, both paths alternating, REPEAT times. (A fixed-rate mode does not compare:
# rdkafka_performance -r spins on the client's CPU and spreads messages so that linger.ms
# forms small batches, while loadgen --rate sends whole batches of 64.)
for _ in $(seq "${REPEAT:-1}"); do
  for n in ${WORKLOADS:-1 4}; do
    kafka_run "$n" 0
    native_run "$n" 0
  done
done
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
