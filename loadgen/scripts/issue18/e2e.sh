#!/bin/bash
# Issue 18 measurement (docs/performance.md, "Issue 18: delivery and durable latency"). Copies of the
# scripts used in that sitting; paths: binaries in /tmp/pd-bin/{shardline,loadgen}-{before,after}, results in $OUT.
# usage: pd-e2e.sh SERVER_BIN LOADGEN_BIN LABEL BUSY(0|1) [DURATION]
# e2e at a fixed rate: 1 KiB x 100, 1 producer + 1 consumer over TCP, acks leader, 24,414 msgs/s
set -u
SRV=$1; LG=$2; LABEL=$3; BUSY=$4; DUR=${5:-20s}
PORT=$((17300 + RANDOM % 500))
D=$(mktemp -d /work/wt-perf-deliver/target/pd-data.XXXX)
$SRV serve --data-dir $D --listen 127.0.0.1:$PORT --shards 1 --metrics-listen 127.0.0.1:${MPORT:-0} --auto-create >${OUT:-/tmp/pd-runs}/$LABEL.server.log 2>&1 &
SPID=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
B1=; B2=
if [ "$BUSY" = 1 ]; then sh -c 'while :; do :; done' & B1=$!; sh -c 'while :; do :; done' & B2=$!; fi
echo "$(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg) label=$LABEL busy=$BUSY" > ${OUT:-/tmp/pd-runs}/$LABEL.meta
if [ -n "${MPORT:-}" ]; then ( for i in $(seq 400); do echo "T $(date +%s.%N)"; curl -s -m 1 127.0.0.1:$MPORT/metrics | grep -E 'loadgen",partition="0"' | grep -E "produced_records|fetched_records|log_end|durable_offset"; sleep 0.1; done > ${OUT:-/tmp/pd-runs}/$LABEL.samples ) & SAMP=$!; fi
$LG --addr 127.0.0.1:$PORT --rate 24414 --message-size 1024 --batch 100 --producers 1 --consumers 1 \
  --partitions 1 --acks leader --inflight 16 --duration $DUR --warmup 3s --no-pin --json ${OUT:-/tmp/pd-runs}/$LABEL.json > ${OUT:-/tmp/pd-runs}/$LABEL.out 2>&1
echo "rc=$? end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >> ${OUT:-/tmp/pd-runs}/$LABEL.meta
[ -n "$B1" ] && kill $B1 $B2
[ -n "${SAMP:-}" ] && kill $SAMP; kill $SPID; wait $SPID 2>/dev/null
rm -rf $D
