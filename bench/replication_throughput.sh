#!/usr/bin/env bash
# Maximum produce throughput of a 3-node cluster (R = 3, acks all) against one node (acks
# durable), 1 KiB messages, with the load generator; optionally two builds side by side
# (docs/performance.md, "Replication: throughput and idle cost after hibernation").
#
#   BINS="base:/tmp/base-bin new:target/release" SECS=10 REPEAT=2 bench/replication_throughput.sh
#
# Each BINS entry is LABEL:DIR with DIR holding `shardline` and `shardline-loadgen`. Per round
# and build: one node `serve --shards 1`, loadgen `--acks durable`; then three nodes
# `serve --node-id N --cluster ... --shards 1`, loadgen `--replicas 3 --acks all` against all
# three addresses. Servers are started and killed by PID; data directories are fresh each run
# (under $DIR, default /var/tmp). Prints one line per run: label, setup, msgs/s, load average.
set -euo pipefail

BINS=${BINS:-"new:target/release"}
SECS=${SECS:-10}
REPEAT=${REPEAT:-1}
PRODUCERS=${PRODUCERS:-4}
PARTITIONS=${PARTITIONS:-4}
BASE=${DIR:-/var/tmp}/rperf-bench.$$
PORT0=${PORT0:-27100}
mkdir -p "$BASE"
PIDS=()

cleanup() {
    for p in "${PIDS[@]:-}"; do
        if [ -n "$p" ]; then
            kill -9 "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    PIDS=()
}
trap 'cleanup; rm -rf "$BASE"' EXIT

# Waits (at most 30 s) until a TCP port accepts connections.
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    return 1
}

loadavg() { cut -d' ' -f1 /proc/loadavg; }

msgs_per_s() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["throughput_msgs_per_s"]), "errors", r["errors"])' "$1" 2>/dev/null || echo "? (no result)"
}

run_single() {
    local label=$1 bin=$2 out=$BASE/$label-single.json
    local d=$BASE/single-$label
    rm -rf "$d"
    "$bin/shardline" serve --listen 127.0.0.1:$((PORT0 + 9)) --metrics-listen 127.0.0.1:$((PORT0 + 19)) \
        --data-dir "$d" --shards 1 >"$BASE/single-$label.log" 2>&1 &
    PIDS+=($!)
    wait_port $((PORT0 + 9))
    local la
    la=$(loadavg)
    "$bin/shardline-loadgen" --addr 127.0.0.1:$((PORT0 + 9)) --acks durable --duration "${SECS}s" \
        --producers "$PRODUCERS" --consumers 0 --partitions "$PARTITIONS" --message-size 1024 \
        --no-pin --json "$out" >"$BASE/lg-single-$label.log" 2>&1 || true
    echo "$label single-durable $(msgs_per_s "$out") load=$la"
    cleanup
}

run_cluster() {
    local label=$1 bin=$2 out=$BASE/$label-cluster.json
    local list="1@127.0.0.1:$((PORT0 + 1)),2@127.0.0.1:$((PORT0 + 2)),3@127.0.0.1:$((PORT0 + 3))"
    for n in 1 2 3; do
        rm -rf "$BASE/c$n-$label"
        "$bin/shardline" serve --node-id $n --cluster "$list" --listen 127.0.0.1:$((PORT0 + 10 + n)) \
            --metrics-listen 127.0.0.1:$((PORT0 + 20 + n)) --data-dir "$BASE/c$n-$label" --shards 1 \
            >"$BASE/c$n-$label.log" 2>&1 &
        PIDS+=($!)
    done
    for n in 1 2 3; do wait_port $((PORT0 + 10 + n)); done
    local la addrs="127.0.0.1:$((PORT0 + 11)),127.0.0.1:$((PORT0 + 12)),127.0.0.1:$((PORT0 + 13))"
    la=$(loadavg)
    "$bin/shardline-loadgen" --addr "$addrs" --replicas 3 --acks all --duration "${SECS}s" \
        --producers "$PRODUCERS" --consumers 0 --partitions "$PARTITIONS" --message-size 1024 \
        --no-pin --json "$out" >"$BASE/lg-cluster-$label.log" 2>&1 || true
    echo "$label cluster-R3-all $(msgs_per_s "$out") load=$la"
    cleanup
}

for r in $(seq 1 "$REPEAT"); do
    for entry in $BINS; do
        label=${entry%%:*}
        bin=${entry#*:}
        echo "# round $r, $label ($bin)"
        run_single "$label" "$bin"
        run_cluster "$label" "$bin"
    done
done
