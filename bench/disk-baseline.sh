#!/usr/bin/env bash
# Yardstick: fio on the same directory as Shardline's data, run side by side with append_bench
# (docs/performance.md, "Storage engine"). The machines are noisy, so every round runs each fio
# job and then append_bench, and the table shows medians over the rounds; a ratio is the median
# of the per-round ratios (Shardline / fio measured minutes apart, never hours).
#
#   fio-durable   --ioengine=io_uring --direct=1 --bs=1m --rw=write --fdatasync=1   (bandwidth)
#   fio-nosync    --ioengine=io_uring --direct=1 --bs=1m --rw=write                 (bandwidth)
#   fio-dsync4k   --ioengine=io_uring --direct=1 --bs=4k --rw=write --sync=dsync, overwriting
#                 blocks laid out (written) first: the best single durable write   (clat p50/p99)
# Diagnostics, to explain a gap rather than to judge (fio preallocates its file by default; the
# engine appends past the end of its segment files, which fio does with --fallocate=none
# --file_append=1):
#   fio-fdatasync4k     the dsync4k overwrite as write + separate fdatasync (the engine's pattern)
#   fio-dsync4k-append  dsync4k appending past the end of the file
#   fio-durable-append, fio-nosync-append  the bandwidth jobs appending past the end of the file
#   fio-leaderlike      appends past the end, fdatasync every 256 MiB: what the engine asks of
#                       the disk at leader level (it syncs sealed data at each 256 MiB segment roll)
#   fio-durablelike     appends past the end, fdatasync every 4 MiB: the engine's durable
#                       pattern at 8 batches in flight (4 MiB per group commit)
#
# Usage: bench/disk-baseline.sh [--dir DIR] [--seconds N] [--rounds N] [--size SIZE] [--out DIR]
#   --dir      directory on the disk under test (default /var/tmp/shardline-disk-baseline);
#              tmpfs is refused
#   --seconds  length of each fio job and each append_bench throughput phase (default 10)
#   --rounds   rounds (default 3)
#   --size     fio file size for the bandwidth jobs (default 16g; must exceed what one job writes)
#   --out      where raw JSON and the summary go (default target/disk-baseline/<timestamp>)
# Needs root (or fio and jq already installed), cargo, and about 2 x size free space.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=/var/tmp/shardline-disk-baseline
seconds=10
rounds=3
size=16g
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
out=${out:-$repo/target/disk-baseline/$(date -u +%Y%m%dT%H%M%SZ)}

need() {
    command -v "$1" >/dev/null && return
    echo "installing $1 ..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
need fio
need jq

mkdir -p "$dir" "$out"
if [[ $(stat -f -c %T "$dir") == tmpfs ]]; then
    echo "$dir is on tmpfs: pass --dir on the real disk" >&2
    exit 1
fi
data="$dir/fio-$$"
cleanup() { rm -f "$data".*; }
trap cleanup EXIT

(cd "$repo" && cargo build --release -q -p shardline-bench --bin append_bench)
append_bench=$repo/target/release/append_bench

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
        "$(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
    echo "dir:  $dir on $(df --output=source,fstype "$dir" | tail -1 | xargs)"
    echo "fio:  $(fio --version); rounds $rounds, $seconds s per job, bandwidth file size $size"
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start"
    echo "code: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "($(git -C "$repo" status --porcelain 2>/dev/null | wc -l) files changed since)"
} | tee "$out/machine.txt"

fio_job() { # name, output file, fio arguments...
    local name=$1 file=$2
    shift 2
    fio --name="$name" --ioengine=io_uring --direct=1 --output-format=json "$@" >"$file"
}

for round in $(seq 1 "$rounds"); do
    r="$out/round-$round"
    mkdir -p "$r"
    echo "round $round/$rounds: fio ..." >&2
    rm -f "$data".*
    fio_job durable "$r/fio-durable.json" --filename="$data.durable" --bs=1m --rw=write \
        --fdatasync=1 --size="$size" --runtime="$seconds" --time_based
    rm -f "$data".*
    fio_job nosync "$r/fio-nosync.json" --filename="$data.nosync" --bs=1m --rw=write \
        --size="$size" --runtime="$seconds" --time_based
    rm -f "$data".*
    fio_job durable-append "$r/fio-durable-append.json" --filename="$data.append" \
        --bs=1m --rw=write --fdatasync=1 --fallocate=none --file_append=1 --size="$size" \
        --runtime="$seconds" --time_based
    rm -f "$data".*
    fio_job nosync-append "$r/fio-nosync-append.json" --filename="$data.append" --bs=1m \
        --rw=write --fallocate=none --file_append=1 --size="$size" --runtime="$seconds" \
        --time_based
    rm -f "$data".*
    fio_job leaderlike "$r/fio-leaderlike.json" --filename="$data.append" --bs=1m \
        --rw=write --fdatasync=256 --fallocate=none --file_append=1 --size="$size" \
        --runtime="$seconds" --time_based
    rm -f "$data".*
    fio_job durablelike "$r/fio-durablelike.json" --filename="$data.append" --bs=1m \
        --rw=write --fdatasync=4 --fallocate=none --file_append=1 --size="$size" \
        --runtime="$seconds" --time_based
    rm -f "$data".*
    fio_job dsync4k-append "$r/fio-dsync4k-append.json" --filename="$data.append" --bs=4k \
        --rw=write --sync=dsync --fallocate=none --file_append=1 --size=1g \
        --runtime="$seconds" --time_based
    rm -f "$data".*
    # Lay the file out with real writes (not fallocate: unwritten extents are not "written").
    fio_job layout "$r/fio-layout.json" --filename="$data.lat" --bs=1m --rw=write \
        --fallocate=none --size=256m
    fio_job dsync4k "$r/fio-dsync4k.json" --filename="$data.lat" --bs=4k --rw=write \
        --sync=dsync --size=256m --runtime="$seconds" --time_based
    fio_job fdatasync4k "$r/fio-fdatasync4k.json" --filename="$data.lat" --bs=4k --rw=write \
        --fdatasync=1 --size=256m --runtime="$seconds" --time_based
    rm -f "$data".*
    echo "round $round/$rounds: append_bench ..." >&2
    "$append_bench" --dir "$dir" --seconds "$seconds" --json >"$r/append.jsonl" \
        2> >(tee "$r/append.log" >&2)
done

# ---------------------------------------------------------------------------- summary
bw() { jq '.jobs[0].write.bw_bytes / 1048576 * 10 | round / 10' "$1"; }
clat() { jq ".jobs[0].write.clat_ns.percentile[\"$2\"] / 1000 | round" "$1"; }
sync_lat() { jq ".jobs[0].sync.lat_ns.percentile[\"$2\"] / 1000 | round" "$1"; }
sl() { jq -s "map(select(.phase == \"$2\"))[0] | $3" "$1"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {
    if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }

div() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
declare -A vals
add() { vals[$1]="${vals[$1]:-} $2"; }
for round in $(seq 1 "$rounds"); do
    r="$out/round-$round"
    a="$r/append.jsonl"
    add sl_durable "$(sl "$a" durable .mib_per_s)"
    add sl_leader "$(sl "$a" leader .mib_per_s)"
    add sl_lone_p50 "$(sl "$a" lone .latency_us.p50)"
    add sl_lone_p99 "$(sl "$a" lone .latency_us.p99)"
    add sl_lone_max "$(sl "$a" lone .latency_us.max)"
    add sl_loneleader_p50 "$(sl "$a" lone-leader .latency_us.p50)"
    add sl_durable_sync "$(sl "$a" durable .mib_per_sync)"
    add fio_durable "$(bw "$r/fio-durable.json")"
    add fio_nosync "$(bw "$r/fio-nosync.json")"
    add fio_durable_append "$(bw "$r/fio-durable-append.json")"
    add fio_nosync_append "$(bw "$r/fio-nosync-append.json")"
    add fio_leaderlike "$(bw "$r/fio-leaderlike.json")"
    add fio_durablelike "$(bw "$r/fio-durablelike.json")"
    add ratio_leaderlike "$(div "$(sl "$a" leader .mib_per_s)" "$(bw "$r/fio-leaderlike.json")")"
    add ratio_durablelike "$(div "$(sl "$a" durable .mib_per_s)" \
        "$(bw "$r/fio-durablelike.json")")"
    add fio_dsync_append_p50 "$(clat "$r/fio-dsync4k-append.json" 50.000000)"
    add fio_dsync_append_p99 "$(clat "$r/fio-dsync4k-append.json" 99.000000)"
    add sl_lone_p90 "$(sl "$a" lone .latency_us.p90)"
    add sl_lone_mean "$(sl "$a" lone .latency_us.mean)"
    add fio_dsync_p50 "$(clat "$r/fio-dsync4k.json" 50.000000)"
    add fio_dsync_p99 "$(clat "$r/fio-dsync4k.json" 99.000000)"
    add fio_fds_p50 "$(awk -v w="$(clat "$r/fio-fdatasync4k.json" 50.000000)" \
        -v s="$(sync_lat "$r/fio-fdatasync4k.json" 50.000000)" 'BEGIN {print w + s}')"
    add ratio_durable "$(div "$(sl "$a" durable .mib_per_s)" "$(bw "$r/fio-durable.json")")"
    add ratio_leader "$(div "$(sl "$a" leader .mib_per_s)" "$(bw "$r/fio-nosync.json")")"
    add ratio_lone "$(div "$(sl "$a" lone .latency_us.p50)" \
        "$(clat "$r/fio-dsync4k.json" 50.000000)")"
    add ratio_lone_p99 "$(div "$(sl "$a" lone .latency_us.p99)" \
        "$(clat "$r/fio-dsync4k.json" 99.000000)")"
done
m() { echo "${vals[$1]}" | median; }
verdict() { # value, op, target
    awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
        ok = (op == ">=") ? (v >= t) : (v <= t); print (ok ? "MET" : "MISSED") }'
}

{
    echo
    echo "Medians of $rounds rounds (per-round values in brackets). Ratio = Shardline / fio."
    printf '%-34s %-14s %-16s %-7s %-8s %s\n' measurement Shardline fio ratio target verdict
    printf '%-34s %-14s %-16s %-7s %-8s %s\n' "durable append bandwidth" \
        "$(m sl_durable) MiB/s" "$(m fio_durable) MiB/s" "$(m ratio_durable)" ">= 0.80" \
        "$(verdict "$(m ratio_durable)" ">=" 0.80)"
    printf '%-34s %-14s %-16s %-7s %-8s %s\n' "leader append bandwidth" \
        "$(m sl_leader) MiB/s" "$(m fio_nosync) MiB/s" "$(m ratio_leader)" ">= 0.80" \
        "$(verdict "$(m ratio_leader)" ">=" 0.80)"
    printf '%-34s %-14s %-16s %-7s %-8s %s\n' "lone durable append p50 vs dsync" \
        "$(m sl_lone_p50) us" "$(m fio_dsync_p50) us" "$(m ratio_lone)" "<= 1.30" \
        "$(verdict "$(m ratio_lone)" "<=" 1.30)"
    printf '%-34s %-14s %-16s %-7s %-8s %s\n' "lone durable append p99 vs dsync" \
        "$(m sl_lone_p99) us" "$(m fio_dsync_p99) us" "$(m ratio_lone_p99)" "-" "(info)"
    echo
    echo "diagnostics (medians, per-round values in brackets):"
    d() { printf '  %-50s %s  [%s]\n' "$1" "$(m "$2") $3" "${vals[$2]# }"; }
    d "Shardline durable" sl_durable MiB/s
    d "fio durable" fio_durable MiB/s
    d "fio durable, 1m appending past EOF" fio_durable_append MiB/s
    d "fio durable-like: appending, fdatasync per 4 MiB" fio_durablelike MiB/s
    d "Shardline durable: MiB per fdatasync" sl_durable_sync MiB
    d "Shardline leader" sl_leader MiB/s
    d "fio no-sync" fio_nosync MiB/s
    d "fio no-sync, 1m appending past EOF" fio_nosync_append MiB/s
    d "fio leader-like: appending, fdatasync per 256 MiB" fio_leaderlike MiB/s
    d "Shardline lone durable p50" sl_lone_p50 us
    d "Shardline lone durable p90" sl_lone_p90 us
    d "Shardline lone durable mean" sl_lone_mean us
    d "Shardline lone durable max" sl_lone_max us
    d "Shardline lone leader p50 (hand-off only)" sl_loneleader_p50 us
    d "fio dsync 4k overwrite p50" fio_dsync_p50 us
    d "fio 4k overwrite, write + fdatasync p50 (sum)" fio_fds_p50 us
    d "fio dsync 4k appending past EOF p50" fio_dsync_append_p50 us
    d "fio dsync 4k appending past EOF p99" fio_dsync_append_p99 us
    d "ratio durable" ratio_durable ""
    d "ratio leader" ratio_leader ""
    d "ratio lone p50" ratio_lone ""
    d "ratio durable vs durable-like fio" ratio_durablelike ""
    d "ratio leader vs leader-like fio" ratio_leaderlike ""
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at the end"
    echo "raw results: $out"
} | tee "$out/summary.txt"
