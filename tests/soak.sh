#!/usr/bin/env bash
# The soak (not part of `cargo test`): starts a release tripcd on a fresh
# state directory and runs `tripcd-bench soak` against it: CLIENTS clients
# (default 10,000) mixing valid traffic, garbage frames, slow readers and
# abrupt hang-ups for SECONDS (default 180), then checks that the daemon
# is alive, answered every valid request, and is back to its descriptors
# and near its memory. Exit status 0 if every check holds.
#   tests/soak.sh [SECONDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-180}"
clients="${2:-10000}"

cargo build --release --bin tripcd --bin tripcd-bench
state="$(mktemp -d)"
trap 'kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; rm -rf "$state"' EXIT
# Errors only: the garbage makes a warning a frame.
RUST_LOG=error target/release/tripcd --state-dir "$state" --download-dir "$state/dl" --peer-bind 127.0.0.1 --announce false --no-dht --no-rpc \
  2>"$state/log" &
daemon=$!
while ! grep -q " ready on " "$state/log" 2>/dev/null && [ ! -S "$state/socket" ]; do
  kill -0 "$daemon" || { cat "$state/log"; exit 1; }
  sleep 0.1
done
status=0
target/release/tripcd-bench soak --socket "$state/socket" --pid "$daemon" \
  -c "$clients" -t "$seconds" || status=$?
kill -TERM "$daemon"
if wait "$daemon"; then
  echo "daemon exited 0 after SIGTERM"
else
  echo "FAILED: daemon exit status $? after SIGTERM"
  status=1
fi
exit "$status"
