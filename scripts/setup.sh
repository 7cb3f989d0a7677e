#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for syncoxide: system packages, then a release build.
# Runs as root or with sudo. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  missing=""
  for p in fuse3; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
cargo build --release -j "${JOBS:-2}" -p mountctl
echo "setup: built target/release/mountctl"
