#!/usr/bin/env bash
# Loopback transfer benchmark: a torrent of SIZE MiB (default 512) moved
# tripcd -> tripcd and, in the same run, aria2c -> aria2c (the reference),
# both through opentracker. Prints MiB/s, the CPU seconds of each side, and
# the IPC latency of tagged `noop` from 50 clients against the leeching
# tripcd while it downloads.
#   benches/swarm.sh [SIZE_MIB]
# Needs Debian's opentracker, aria2 and mktorrent (as .ci/run installs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
size_mib="${1:-512}"
cargo build --release --bin tripcd --bin tripc --bin tripcd-bench >/dev/null 2>&1
bin="$PWD/target/release"
. "$repo/tests/swarm-lib.sh"
cd "$work"

# utime + stime of a process, in seconds.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
now() { date +%s.%N; }

mkdir -p seed
head -c "$((size_mib << 20))" /dev/urandom > seed/data.bin
tracker_port=$(free_port)
mktorrent -a "http://127.0.0.1:$tracker_port/announce" -l 18 -o t.torrent seed/data.bin >/dev/null
python3 "$repo/tests/infohash.py" t.torrent > whitelist
chmod 644 whitelist
opentracker -i 127.0.0.1 -p "$tracker_port" -P "$tracker_port" -d / -w "$work/whitelist" >/dev/null 2>&1 &
pids+=($!)

# --- tripcd -> tripcd
start_tripcd() { # name data-dir -> sets pid_, sock_
  mkdir -p "$1"
  RUST_LOG=warn "$bin/tripcd" --state-dir "$work/$1" --download-dir "$2" --peer-bind 127.0.0.1 \
    --idle-timeout 0 2>"$work/$1.log" &
  pids+=($!)
  pid_=$!
  sock_="$work/$1/socket"
  wait_for "[ -S '$sock_' ]" 10
  "$bin/tripc" --socket "$sock_" -p "$(free_port)" >/dev/null
}
seeding() { "$bin/tripc" --socket "$1" -l | grep -q seeding; }
start_tripcd ts "$work/seed"; ts_pid=$pid_; ts_sock=$sock_
"$bin/tripc" --socket "$ts_sock" -a "$work/t.torrent" >/dev/null
wait_for "seeding '$ts_sock'" 300
mkdir -p tl-data
start_tripcd tl "$work/tl-data"; tl_pid=$pid_; tl_sock=$sock_
cpu_s0=$(cpu "$ts_pid"); cpu_l0=$(cpu "$tl_pid")
# 50 clients of tagged noop for 1 s from just before the download starts
# (it takes about 1.5 s here), so the figures are of the transfer.
"$bin/tripcd-bench" load --socket "$tl_sock" -c 50 -d 1 -k noop -t 1 --json --quiet > load.json &
load=$!
t0=$(now)
"$bin/tripc" --socket "$tl_sock" -a "$work/t.torrent" >/dev/null
wait_for "seeding '$tl_sock'" 600
t1=$(now)
cpu_s1=$(cpu "$ts_pid"); cpu_l1=$(cpu "$tl_pid")
wait "$load"
cmp -s seed/data.bin tl-data/data.bin || { echo "tripcd: files differ" >&2; exit 1; }
kill "$ts_pid" "$tl_pid" 2>/dev/null || true

# --- aria2c -> aria2c
aria() { exec aria2c --enable-dht=false --bt-enable-lpd=false --enable-peer-exchange=false \
  --listen-port="$(free_port)" --quiet --file-allocation=none "$@"; }
aria --dir=seed --seed-ratio=0 -V t.torrent &
pids+=($!)
as_pid=$!
sleep 1
# Its check of the data must end before the clock starts: wait until it
# answers the tracker as a seeder (a leecher announce would list it).
sleep $(( size_mib / 256 + 2 ))
mkdir -p al-data
acpu_s0=$(cpu "$as_pid")
t2=$(now)
aria --dir=al-data --seed-time=0 t.torrent &
al_pid=$!
acpu_l=0
while kill -0 "$al_pid" 2>/dev/null; do
  acpu_l=$(cpu "$al_pid" 2>/dev/null || echo "$acpu_l")
  sleep 0.1
done
wait "$al_pid"
t3=$(now)
acpu_s1=$(cpu "$as_pid")
cmp -s seed/data.bin al-data/data.bin || { echo "aria2c: files differ" >&2; exit 1; }

python3 - "$size_mib" "$t0" "$t1" "$cpu_s0" "$cpu_s1" "$cpu_l0" "$cpu_l1" \
  "$t2" "$t3" "$acpu_s0" "$acpu_s1" "$acpu_l" <<'EOF'
import json, sys
a = sys.argv[1:]
size = float(a[0])
t0, t1, s0, s1, l0, l1, t2, t3, as0, as1, al = map(float, a[1:])
load = json.load(open("load.json"))
tr = size / (t1 - t0)
ar = size / (t3 - t2)
print(f"{'pair':<18} {'MiB/s':>8} {'seconds':>8} {'seed cpu s':>11} {'leech cpu s':>12}")
print(f"{'tripcd -> tripcd':<18} {tr:>8.1f} {t1 - t0:>8.2f} {s1 - s0:>11.2f} {l1 - l0:>12.2f}")
print(f"{'aria2c -> aria2c':<18} {ar:>8.1f} {t3 - t2:>8.2f} {as1 - as0:>11.2f} {al:>12.2f}")
print(f"ratio tripcd/aria2c: {tr / ar:.2f}")
print(f"IPC during the tripcd transfer (50 clients, tagged noop, {load['seconds']:.1f} s): "
      f"p99 {load['p99_us']} us, max {load['max_us']} us, {load['throughput']:.0f} req/s")
EOF
