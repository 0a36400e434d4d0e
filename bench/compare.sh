#!/usr/bin/env bash
# Shardline vs NATS JetStream vs Redis Streams on this machine, in one run, under the identical
# shardline-loadgen workload (docs/performance.md, "Peers: NATS JetStream and Redis Streams").
#
# Starts, on 127.0.0.1 with data under one temporary directory (removed on exit):
#   shardline serve          acks=durable: fdatasync before the ack (group commit)
#   redis-server             appendonly yes, appendfsync always (fsync of the AOF before replies)
#   nats-server -js          JetStream file storage; fsync per sync_interval when the server has
#                            it (>= 2.10: `sync_interval: always` is set), else its 2-minute default
# installing redis-server and nats-server from Debian's packages when missing. For each message
# size it runs every broker at maximum throughput (closed loop), then every broker at one fixed
# rate (open loop, latency from intended send times; plus Shardline at acks=leader, like for like
# with NATS's un-fsynced PubAck), writes one JSON file per run and one comparison report per
# group plus one over all runs, and stops the servers it started by PID. Every run starts after
# a `sync` (no writeback left over from the previous run; Redis's AOF auto-rewrite is off). A 4 KiB
# write+fdatasync probe before and after shows the disk's fsync tail at the time.
#
# Usage: bench/compare.sh [--out DIR] [--duration 10s] [--warmup 2s] [--sizes "100 1024"]
#                         [--rate N|auto] [--batch N] [--inflight N] [--partitions N]
#                         [--producers N] [--consumers N]
#   --out        results (default target/compare/<timestamp>)
#   --rate auto  (default) half of the lowest maximum throughput measured for that size,
#                rounded down to a multiple of 1000: a rate all three sustain; or one rate for
#                every size, or per size: --rate 100:26000,1024:6000
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=""
duration=10s
warmup=2s
sizes="100 1024"
rate=auto
batch=32
inflight=16
partitions=4
producers=2
consumers=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --inflight) inflight=$2; shift 2 ;;
        --partitions) partitions=$2; shift 2 ;;
        --producers) producers=$2; shift 2 ;;
        --consumers) consumers=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
out=${out:-$repo/target/compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

# --- peers from Debian's packages (check by command name, install by package name) --------
need_pkgs=()
for p in redis-server nats-server; do command -v "$p" >/dev/null 2>&1 || need_pkgs+=("$p"); done
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    echo "== installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}"
fi

# --- build (release) ------------------------------------------------------------------------
echo "== building release binaries"
(cd "$repo" && cargo build --release -q -p shardline-net --bin shardline \
    -p shardline-loadgen --bin shardline-loadgen)
target=${CARGO_TARGET_DIR:-$repo/target}
shardline=$target/release/shardline
loadgen=$target/release/shardline-loadgen

# glommio needs locked memory (see .ci/run).
if [[ "$(ulimit -l)" != "unlimited" ]] && [[ "$(ulimit -l)" -lt 8192 ]]; then
    ulimit -l 8192 2>/dev/null || echo "warning: could not raise ulimit -l" >&2
fi

# --- servers ----------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/shardline-compare.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for FILE PATTERN: the first line of FILE matching PATTERN, within 30 s.
wait_for() {
    local i
    for i in $(seq 300); do
        if grep -q -- "$2" "$1" 2>/dev/null; then
            grep -m1 -- "$2" "$1"
            return 0
        fi
        sleep 0.1
    done
    echo "no '$2' in $1 within 30 s:" >&2
    cat "$1" >&2
    return 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$work/shardline" "$work/redis" "$work/nats"
"$shardline" serve --listen 127.0.0.1:0 --data-dir "$work/shardline" \
    >"$work/shardline.log" 2>&1 &
pids+=($!)
shardline_addr=$(wait_for "$work/shardline.log" "shardline listening on" | awk '{print $NF}')

redis_port=$(free_port)
# No automatic AOF rewrite: a background rewrite of the GBs the max-throughput runs append
# would load the disk during the later runs of every broker.
redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$work/redis" \
    --appendonly yes --appendfsync always --auto-aof-rewrite-percentage 0 --save "" \
    --daemonize no \
    --logfile "$work/redis.log" &
pids+=($!)
wait_for "$work/redis.log" "Ready to accept connections" >/dev/null
redis_addr=127.0.0.1:$redis_port

# sync_interval exists from nats-server 2.10; older servers refuse the key.
nats_version=$(nats-server --version | sed 's/.*v//')
nats_sync="default (2 min; nats-server $nats_version has no sync_interval)"
nats_sync_line=""
if [[ "$(printf '%s\n2.10.0\n' "$nats_version" | sort -V | head -1)" == "2.10.0" ]]; then
    nats_sync="sync_interval: always"
    nats_sync_line="sync_interval: always"
fi
cat >"$work/nats.conf" <<EOF
listen: 127.0.0.1:-1
jetstream {
  store_dir: "$work/nats"
  $nats_sync_line
}
EOF
nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
pids+=($!)
nats_addr=$(wait_for "$work/nats.log" "Listening for client connections on" | awk '{print $NF}')

{
    echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine:     $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
    echo "loadavg:     $(cat /proc/loadavg) (before)"
    echo "shardline:   $shardline_addr  acks=durable (fdatasync before ack)"
    echo "redis:       $redis_addr  $(redis-server --version | awk '{print $3}') appendonly yes, appendfsync always"
    echo "nats:        $nats_addr  nats-server $nats_version JetStream file store, $nats_sync"
    echo "workload:    duration $duration, warm-up $warmup, $producers producers, $consumers consumers,"
    echo "             $partitions partitions, batch $batch, inflight $inflight, acks durable"
} | tee "$out/setup.txt"

# Disk yardstick: 4 KiB write + fdatasync, 300 times, in the data directory's filesystem. The
# durable brokers' tails follow this disk's fsync tail (the VM's disk is shared).
fsync_probe() {
    python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
block, lat = b"x" * 4096, []
for i in range(300):
    t = time.perf_counter()
    os.pwrite(fd, block, (i % 64) * 4096)
    os.fdatasync(fd)
    lat.append((time.perf_counter() - t) * 1e6)
os.close(fd)
os.unlink(path)
lat.sort()
q = lambda p: int(lat[min(len(lat) - 1, int(p * len(lat)))])
print(f"4 KiB write+fdatasync us: p50 {q(0.5)} p99 {q(0.99)} max {int(lat[-1])}")
PY
}
echo "fsync:       $(fsync_probe) (before)" | tee -a "$out/setup.txt"

# run NAME DRIVER ADDR SIZE ACKS [RATE]: one loadgen run; its JSON goes to $out/NAME.json.
run() {
    local name=$1 driver=$2 addr=$3 size=$4 acks=$5 rate_arg=()
    [[ $# -ge 6 ]] && rate_arg=(--rate "$6")
    echo "== $name"
    # Start every run with no dirty pages left by the previous one (NATS never fsyncs within
    # a run, so the kernel would write its data back during the next broker's run).
    sync
    sleep 2
    "$loadgen" --driver "$driver" --addr "$addr" --duration "$duration" --warmup "$warmup" \
        --message-size "$size" --batch "$batch" --inflight "$inflight" \
        --partitions "$partitions" --producers "$producers" --consumers "$consumers" \
        --acks "$acks" "${rate_arg[@]}" --json "$out/$name.json" | tee "$out/$name.txt" \
        || echo "!! $name exited with status ${PIPESTATUS[0]} (see $out/$name.txt)"
}

throughput() {
    sed -n 's/.*"throughput_msgs_per_s": *\([0-9.]*\).*/\1/p' "$1" | head -1 | cut -d. -f1
}

all=()
for size in $sizes; do
    group=()
    for broker in shardline nats redis; do
        addr_var=${broker}_addr
        run "$broker-${size}b-max" "$broker" "${!addr_var}" "$size" durable
        group+=("$out/$broker-${size}b-max.json")
    done
    "$loadgen" compare "${group[@]}" --report "$out/report-${size}b-max" | tee "$out/compare-${size}b-max.txt"
    all+=("${group[@]}")

    size_rate=$rate
    if [[ "$rate" == *:* ]]; then  # per size: "100:26000,1024:6000"
        size_rate=auto
        for pair in ${rate//,/ }; do
            [[ "${pair%%:*}" == "$size" ]] && size_rate=${pair#*:}
        done
    fi
    if [[ "$size_rate" == auto ]]; then
        lowest=""
        for f in "${group[@]}"; do
            t=$(throughput "$f")
            [[ -z "$t" ]] && continue
            if [[ -z "$lowest" ]] || (( t < lowest )); then lowest=$t; fi
        done
        size_rate=$(( ${lowest:-2000} / 2 / 1000 * 1000 ))
        (( size_rate < 1000 )) && size_rate=1000
        echo "== fixed rate for ${size} B: $size_rate msgs/s (half the lowest maximum)"
    fi
    group=()
    for broker in shardline nats redis; do
        addr_var=${broker}_addr
        run "$broker-${size}b-rate$size_rate" "$broker" "${!addr_var}" "$size" durable "$size_rate"
        group+=("$out/$broker-${size}b-rate$size_rate.json")
    done
    # Like for like with NATS, whose PubAck does not wait for an fsync: Shardline at leader.
    run "shardline-leader-${size}b-rate$size_rate" shardline "$shardline_addr" "$size" leader "$size_rate"
    group+=("$out/shardline-leader-${size}b-rate$size_rate.json")
    "$loadgen" compare "${group[@]}" --report "$out/report-${size}b-rate" | tee "$out/compare-${size}b-rate.txt"
    all+=("${group[@]}")
done
"$loadgen" compare "${all[@]}" --report "$out/report" >"$out/compare-all.txt"
echo "fsync:       $(fsync_probe) (after)" | tee -a "$out/setup.txt"
echo "loadavg:     $(cat /proc/loadavg) (after)" | tee -a "$out/setup.txt"
echo "== results in $out (report: $out/report/index.html)"
