#!/usr/bin/env python3
"""Prints syncoxide / rclone / native side by side from a ../shared/bench raw.tsv, with the
ratio to rclone (>1 means syncoxide is better) and the issue's goals."""
import collections
import statistics
import sys

rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if len(f) < 5 or f[0] == "system":
        continue
    try:
        rows[(f[0], f[2])].append(float(f[3]))
    except ValueError:
        pass

def med(sys_, metric):
    v = rows.get((sys_, metric))
    return statistics.median(v) if v else None

# metric, label, higher is better, goal (ratio to rclone), unit
METRICS = [
    ("seq_read_cold_s", "seq read 1 GiB cold (s)", False, None),
    ("seq_read_warm_s", "seq read 1 GiB warm (s)", False, 1.5),
    ("rand_read_warm_iops", "4K random read warm (IOPS)", True, None),
    ("rand_read_cold_iops", "4K random read cold (IOPS)", True, None),
    ("write_s", "write 1 GiB, dd conv=fsync (s)", False, None),
    ("write_durable_s", "write 1 GiB until on the remote (s)", False, None),
    ("extract_s", "untar 20k files (s)", False, 2.0),
    ("extract_durable_s", "untar until all on the remote (s)", False, None),
    ("lsR_cold_s", "ls -lR cold mount (s)", False, 1.0),
    ("stat_cold_s", "stat 20k files cold (s)", False, None),
    ("find_cold_s", "find cold (s)", False, None),
    ("fs_read_rss_mb", "peak RSS, read phase (MiB)", False, None),
    ("fs_randcold_rss_mb", "peak RSS, random read (MiB)", False, None),
    ("fs_write_rss_mb", "peak RSS, write phase (MiB)", False, None),
    ("fs_small_rss_mb", "peak RSS, untar phase (MiB)", False, None),
    ("fs_stat_rss_mb", "peak RSS, stat phase (MiB)", False, None),
]

print("| workload | syncoxide | rclone | native | vs rclone | goal |")
print("|---|---|---|---|---|---|")
for m, label, higher, goal in METRICS:
    s, r, n = med("syncoxide", m), med("rclone_local", m), med("native", m)
    if s is None:
        continue
    ratio = None
    if r:
        ratio = (s / r) if higher else (r / s if s else None)
    fmt = lambda x: "–" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.2f}")
    g = ""
    if goal is not None and ratio is not None:
        g = f"≥ {goal}x: {'met' if ratio >= goal else 'NOT met'}"
    if m.startswith("fs_") and m.endswith("rss_mb"):
        g = f"< 200 MiB: {'met' if s < 200 else 'NOT met'}"
    print(f"| {label} | {fmt(s)} | {fmt(r)} | {fmt(n)} | {'–' if ratio is None else f'{ratio:.2f}x'} | {g} |")
