#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, the dependency direction, and
# every test. Two jobs: the machine has two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
JOBS="${JOBS:-2}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== dependency direction: fs-core and cache know nothing of FUSE, WinFSP, errno or clap"
for crate in syncoxide-cache syncoxide-fs-core; do
  # No adapter or CLI crate anywhere below them ...
  if cargo tree -e normal -p "$crate" --prefix none 2>/dev/null | grep -E '^(fuser|winfsp|clap) ' ; then
    echo "error: $crate depends on an adapter or CLI crate (above)"; exit 1
  fi
  # ... and no errno crate of their own (tokio and russh use libc underneath; that is theirs).
  if cargo tree -e normal -p "$crate" --depth 1 --prefix none 2>/dev/null | grep -E '^(libc|nix|errno) ' ; then
    echo "error: $crate depends directly on an errno crate (above)"; exit 1
  fi
done

echo "== cargo clippy"
cargo clippy -j "$JOBS" --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test -j "$JOBS" --workspace -- --test-threads "$JOBS"
