#!/usr/bin/env bash
# One tripcd seeding to many leechers: tripcd-bench engine leechers opens
# CONNECTIONS (default 200) simulated leechers to a release tripcd seeding a
# SIZE_MIB torrent (default 256), measures the daemon's memory per
# connection with all of them handshaken and at rest, then makes them all
# interested (the choker serves its unchoked few at full speed) for SECONDS
# (default 10) while 50 IPC clients keep a tagged noop in flight each.
#   benches/leechers.sh [CONNECTIONS] [SECONDS] [SIZE_MIB]
# Needs nothing beyond the build (no tracker: the leechers dial the daemon).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
conns="${1:-200}"
seconds="${2:-10}"
size_mib="${3:-256}"
cargo build --release -q --bin tripcd --bin tripc --bin tripcd-bench
bin="$repo/target/release"
. "$repo/tests/swarm-lib.sh"
cd "$work"

mkdir -p seed state
head -c "$((size_mib << 20))" /dev/urandom > seed/data.bin
"$bin/tripcd-bench" mktorrent seed/data.bin --piece-length 1048576 >/dev/null
port=$(free_port)
# Room for every leecher on the one torrent (the defaults are 240 and 60).
RUST_LOG=warn "$bin/tripcd" --state-dir "$work/state" --download-dir "$work/seed" \
  --peer-bind 127.0.0.1 --announce false --no-dht --no-rpc --idle-timeout 0 \
  --max-peers $((conns + 40)) --max-peers-per-torrent $((conns + 10)) 2>"$work/tripcd.log" &
pids+=($!)
pid=$!
sock="$work/state/socket"
wait_for "[ -S '$sock' ]" 10
"$bin/tripc" --socket "$sock" -p "$port" -a "$work/seed/data.bin.torrent" >/dev/null
wait_for "'$bin/tripc' --socket '$sock' -l | grep -q seeding" 300
"$bin/tripcd-bench" engine leechers --peer "127.0.0.1:$port" --torrent "$work/seed/data.bin.torrent" \
  --socket "$sock" --pid "$pid" -c "$conns" -t "$seconds" ${JSON:+--json}
