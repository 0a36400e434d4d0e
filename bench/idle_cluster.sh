#!/usr/bin/env bash
# Idle cost of a 3-node cluster with N replicated partitions (R=3), no traffic (docs/performance.md,
# "Replication: idle cost with real processes"): CPU per node over SECS seconds before and after the
# topic (utime+stime from /proc/PID/stat), RSS growth per replica, open files. Usage:
#   N=1000 SECS=30 bench/idle_cluster.sh   (HOLD=S keeps the nodes up S more seconds, e.g. for perf)
set -euo pipefail
BIN=${BIN:-target/release/shardline}   # cargo build --release -p shardline-net --bin shardline
N=${N:-1000}; SECS=${SECS:-30}; SHARDS=${SHARDS:-2}
DIR=$(mktemp -d /var/tmp/idle.XXXX)
B=$((20000 + RANDOM % 20000))
LIST="1@127.0.0.1:$((B+1)),2@127.0.0.1:$((B+2)),3@127.0.0.1:$((B+3))"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for n in 1 2 3; do
  $BIN serve --node-id $n --cluster "$LIST" --listen 127.0.0.1:$((B+10+n)) --metrics-listen 127.0.0.1:0 \
    --data-dir "$DIR/d$n" --shards "$SHARDS" > "$DIR/log$n" 2>&1 &
  PIDS+=($!)
done
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
$BIN --wait 20s --addr 127.0.0.1:$((B+11)) topic list > /dev/null
sleep 5
for i in 0 1 2; do B0[$i]=$(cpu ${PIDS[$i]}); done
sleep "$SECS"
for i in 0 1 2; do
  b1=$(cpu ${PIDS[$i]})
  echo "node $((i+1)) before the topic: idle CPU $(echo "scale=2; ($b1 - ${B0[$i]}) * 100 / $TCK / $SECS" | bc)% of a core over ${SECS}s"
done
for i in 0 1 2; do R0[$i]=$(rss ${PIDS[$i]}); done
t0=$(date +%s.%N)
$BIN --addr 127.0.0.1:$((B+11)) topic create idle --partitions "$N" --replicas 3 || echo "create answered an error (it may still apply)"
t1=$(date +%s.%N)
echo "create of $N partitions took $(echo "$t1 - $t0" | bc) s"
# Wait until every partition has a leader.
for _ in $(seq 240); do
  L=$($BIN --addr 127.0.0.1:$((B+12)) topic describe idle --json 2>/dev/null | python3 -c '
import json,sys
d=json.load(sys.stdin); ps=d.get("partitions",[])
print(sum(1 for p in ps if p.get("leader") not in (None,0)))' 2>/dev/null || echo 0)
  [ "$L" -ge "$N" ] && break; sleep 1
done
echo "partitions with a leader: $L of $N"
sleep 10   # let the groups go quiet (hibernate)
for i in 0 1 2; do C0[$i]=$(cpu ${PIDS[$i]}); done
sleep "$SECS"
for i in 0 1 2; do
  c1=$(cpu ${PIDS[$i]}); r1=$(rss ${PIDS[$i]})
  pct=$(echo "scale=2; ($c1 - ${C0[$i]}) * 100 / $TCK / $SECS" | bc)
  per=$(echo "scale=1; ($r1 - ${R0[$i]}) / $N" | bc)
  fds=$(ls /proc/${PIDS[$i]}/fd | wc -l)
  echo "node $((i+1)): idle CPU ${pct}% of a core over ${SECS}s; RSS ${R0[$i]} -> $r1 KiB (${per} KiB per replica); $fds fds"
done
echo "load: $(cat /proc/loadavg)"
echo "pids: ${PIDS[*]}"
sleep ${HOLD:-0}
