#!/usr/bin/env bash
# Runs the same workloads on this drive, on `rclone mount --vfs-cache-mode full` over the same
# kind of folder, and on the plain folder, in one run (../shared/bench), then prints ratios.
# Needs root, fuse3, fio, rclone (../shared/bench/install-deps.sh) and a release build.
# Usage: benches/compare.sh [REPS]      (from the project root)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${1:-1}"
OUT="${BENCH_OUT:-/var/tmp/syncoxide-bench-$(date -u +%Y%m%d-%H%M%S)}"
cargo build --release -j "${JOBS:-2}" -p mountctl
REPS="$REPS" FIO_RUNTIME="${FIO_RUNTIME:-10}" SMALL_TIMEOUT="${SMALL_TIMEOUT:-180}" \
  ../shared/bench/run.sh -o "$OUT" syncoxide rclone_local native
python3 benches/ratios.py "$OUT/raw.tsv"
