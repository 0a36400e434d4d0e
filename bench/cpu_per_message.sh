#!/usr/bin/env bash
# CPU per produced message at a fixed rate: user+sys time of a `shardline serve` process over a
# loadgen run against it, divided by the messages acknowledged (docs/performance.md, "CPU per
# message"). Give one or more build directories (each holding `shardline` and
# `shardline-loadgen`, e.g. target/release of two checkouts); rounds interleave them so that
# they see the same machine, and the summary prints medians and the ratio to the first.
#
# Usage: bench/cpu_per_message.sh [--rounds N] [--rate MSGS_PER_S] [--seconds N]
#                                 [--message-size B] [--batch N] [--acks LEVEL] DIR [DIR ...]
# Defaults: 3 rounds, 20000 msgs/s, 10 s, 100-byte messages, batches of 10, acks leader,
# one shard, one producer, no consumer, 1 partition.
set -euo pipefail

rounds=3
rate=20000
seconds=10
size=100
batch=10
acks=leader
dirs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --message-size) size=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --acks) acks=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) dirs+=("$1"); shift ;;
    esac
done
[[ ${#dirs[@]} -gt 0 ]] || { echo "give at least one build directory" >&2; exit 2; }
clk_tck=$(getconf CLK_TCK)

# Ticks of user+sys time of a process (fields 14 and 15 of /proc/PID/stat, after the comm field).
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# One measurement: prints "cpu_seconds acked".
measure() {
    local dir=$1 data out pid addr json before after acked
    data=$(mktemp -d /var/tmp/sl-cpu.XXXXXX)
    out=$(mktemp)
    "$dir/shardline" serve --data-dir "$data" --listen 127.0.0.1:0 --shards 1 \
        --metrics-listen 127.0.0.1:0 >"$out" 2>/dev/null &
    pid=$!
    for _ in $(seq 1 200); do
        addr=$(sed -n 's/^shardline listening on //p' "$out" | head -1)
        [[ -n $addr ]] && break
        sleep 0.05
    done
    [[ -n $addr ]] || { kill "$pid"; echo "server did not start" >&2; exit 1; }
    json=$(mktemp)
    before=$(cpu_ticks "$pid")
    "$dir/shardline-loadgen" --addr "$addr" --rate "$rate" --duration "${seconds}s" --warmup 0s \
        --producers 1 --consumers 0 --partitions 1 --message-size "$size" --batch "$batch" \
        --acks "$acks" --json "$json" >/dev/null 2>&1
    after=$(cpu_ticks "$pid")
    acked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["acked"])' "$json")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data" "$out" "$json"
    echo "$(( after - before )) $acked"
}

declare -A results
for r in $(seq 1 "$rounds"); do
    for d in "${dirs[@]}"; do
        read -r ticks acked < <(measure "$d")
        ns=$(python3 -c "print(round($ticks / $clk_tck * 1e9 / max($acked, 1)))")
        echo "round $r  $d  cpu ${ticks} ticks  acked $acked  ${ns} ns/message"
        results[$d]+="$ns "
    done
done
echo "== median CPU per message (server user+sys), rate $rate/s, ${size} B, batch $batch, acks $acks"
first=""
for d in "${dirs[@]}"; do
    med=$(python3 -c "import statistics,sys; print(statistics.median(map(int, sys.argv[1:])))" ${results[$d]})
    [[ -z $first ]] && first=$med
    ratio=$(python3 -c "print(f'{$med / $first:.3f}')")
    echo "$d: ${med} ns/message (ratio to first: $ratio)"
done
