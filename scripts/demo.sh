#!/usr/bin/env bash
# The main job on the embedded default, no server needed: a local folder as the remote,
# mounted through the encrypted cache. Passphrase "demo" unless SYNCOXIDE_PASSPHRASE is set.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="${SYNCOXIDE_DEMO_DIR:-/tmp/syncoxide-demo}"
export SYNCOXIDE_PASSPHRASE="${SYNCOXIDE_PASSPHRASE:-demo}"
MOUNTCTL="$PWD/target/release/mountctl"
# Always: a binary left from an older checkout would run old code (cheap when up to date).
cargo build --release -j "${JOBS:-2}" -p mountctl
mkdir -p "$DEMO/remote" "$DEMO/mnt"
if [ -z "$(ls -A "$DEMO/remote")" ]; then
  echo "hello from the remote folder" > "$DEMO/remote/hello.txt"
  mkdir -p "$DEMO/remote/docs" && seq 1 100000 > "$DEMO/remote/docs/numbers.txt"
fi
if grep -q " $DEMO/mnt " /proc/self/mountinfo; then
  echo "demo: already mounted at $DEMO/mnt"
else
  "$MOUNTCTL" mount "$DEMO/remote" "$DEMO/mnt" --cache-dir "$DEMO/cache" --cache-size 1GiB
fi
echo "demo: $DEMO/remote is mounted at $DEMO/mnt:"
ls -l "$DEMO/mnt"
echo "hello through the mount" > "$DEMO/mnt/written-here.txt"
"$MOUNTCTL" status "$DEMO/mnt"
cat <<TXT

Try: ls $DEMO/mnt, edit files there, then
  $MOUNTCTL flush $DEMO/mnt      # everything on the remote folder
  $MOUNTCTL unmount $DEMO/mnt
TXT
