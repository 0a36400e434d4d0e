#!/usr/bin/env python3
"""Medians (and per-round values) of bench/roll-latency.sh output: append_bench's roll phases
before and after, and the fio yardsticks. usage: roll-latency-summary.py OUT_DIR"""
import glob, json, os, statistics, sys

out = sys.argv[1]


def rounds(pattern):
    return sorted(glob.glob(os.path.join(out, pattern)), key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))


def bench(build, phase, key):
    vals = []
    for p in rounds(f"roll-{build}-*.jsonl"):
        for line in open(p):
            j = json.loads(line)
            if j.get("phase") == phase:
                vals.append(j["latency_us"][key])
    return vals


def fio(kind, key):
    vals = []
    for p in rounds(f"fio-{kind}-*.json"):
        clat = json.load(open(p))["jobs"][0]["write"]["clat_ns"]
        v = clat["max"] if key == "max" else clat["percentile"][{"p50": "50.000000", "p99": "99.000000"}[key]]
        vals.append(round(v / 1000))
    return vals


def med(v):
    return statistics.median(v) if v else float("nan")


for phase, kind in (("roll-durable", "dsync"), ("roll-leader", "nosync")):
    for key in ("p50", "p99", "max"):
        b, a, f = bench("before", phase, key), bench("after", phase, key), fio(kind, key)
        print(f"{phase:12} {key:4} before {med(b):>8} {b}  after {med(a):>8} {a}  "
              f"after/before {med(a) / med(b):.2f}  fio-{kind} {med(f)} {f}")
