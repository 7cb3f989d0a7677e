#!/usr/bin/env bash
# The main job on an embedded default, no server needed. Until the drive lands (issue 3) this
# creates the encrypted cache a mount will use and shows its status; the passphrase is "demo"
# unless SYNCOXIDE_PASSPHRASE says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="${SYNCOXIDE_DEMO_DIR:-/tmp/syncoxide-demo}"
export SYNCOXIDE_PASSPHRASE="${SYNCOXIDE_PASSPHRASE:-demo}"
MOUNTCTL=target/release/mountctl
[ -x "$MOUNTCTL" ] || cargo build --release -j "${JOBS:-2}" -p mountctl
"$MOUNTCTL" cache init --cache-dir "$DEMO/cache" --cache-size 1GiB
"$MOUNTCTL" cache status --cache-dir "$DEMO/cache" --cache-size 1GiB
