#!/usr/bin/env bash
# Speed limits and the cost of encryption, tripcd -> tripcd on loopback
# through opentracker, in one run:
# 1. accuracy of the leecher's `downlimit` and, separately, the seeder's
#    `uplimit` at each limit in LIMITS (KiB/s, default "1024 10240"): the
#    payload rate the leecher's `download-total` shows over SECONDS (default
#    20) after 2 s of warm-up, each case with a fresh, empty leecher; beside
#    it the unlimited rate of the same pair and torrent;
# 2. an unlimited transfer of SIZE_MIB (default 256) with `encryption`
#    `required` (MSE, RC4) on both sides against `plaintext` on both: MiB/s,
#    CPU seconds of each daemon, and a check in the leecher's debug log that
#    the connection really was (or was not) encrypted.
#   benches/manners.sh [SECONDS] [SIZE_MIB]          LIMITS="512 4096" benches/manners.sh
# Needs Debian's opentracker and mktorrent (as .ci/run installs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
seconds="${1:-20}"
size_mib="${2:-256}"
read -ra limits <<<"${LIMITS:-1024 10240}"
warm=2
cargo build --release -q --bin tripcd --bin tripc
bin="$PWD/target/release"
. "$repo/tests/swarm-lib.sh"
cd "$work"

# utime + stime of a process, in seconds.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# Wall-clock time in seconds, to the microsecond, without starting a process
# (bash's own clock; `date +%s.%N` would add a fork to every sample).
now() { printf '%s' "$EPOCHREALTIME"; }
tripc() { "$bin/tripc" "$@"; }

# The limited leecher must never run out of data: the torrent holds the
# largest limit's warm-up, measurement and slack, with a quarter to spare.
max_limit=0
for l in "${limits[@]}"; do [ "$l" -gt "$max_limit" ] && max_limit=$l; done
limit_mib=$(( (max_limit * (warm + seconds + 4) * 5 / 4 + 1023) / 1024 ))
[ "$limit_mib" -ge 128 ] || limit_mib=128

mkdir -p seed
head -c "$((limit_mib << 20))" /dev/urandom > seed/limit.bin
head -c "$((size_mib << 20))" /dev/urandom > seed/enc.bin
tracker_port=$(free_port)
for f in limit enc; do
  mktorrent -a "http://127.0.0.1:$tracker_port/announce" -l 18 -o "$f.torrent" "seed/$f.bin" >/dev/null
  python3 "$repo/tests/infohash.py" "$f.torrent"
done > whitelist
chmod 644 whitelist
opentracker -i 127.0.0.1 -p "$tracker_port" -P "$tracker_port" -d / -w "$work/whitelist" >/dev/null 2>&1 &
pids+=($!)

start_tripcd() { # name data-dir [RUST_LOG] -> sets pid_, sock_
  mkdir -p "$1"
  RUST_LOG="${3:-warn}" "$bin/tripcd" --state-dir "$work/$1" --download-dir "$2" --peer-bind 127.0.0.1 --no-dht --no-rpc \
    --idle-timeout 0 2>"$work/$1.log" &
  pids+=($!)
  pid_=$!
  sock_="$work/$1/socket"
  wait_for "[ -S '$sock_' ]" 10
  tripc --socket "$sock_" -p "$(free_port)" >/dev/null
}
stop_tripcd() { # socket pid
  tripc --socket "$1" -q >/dev/null
  wait "$2" 2>/dev/null || true
}
seeding() { tripc --socket "$1" -l | grep -q seeding; }
# Waits, polling every 10 ms, until the daemon at $1 seeds (at most $2 s).
until_seeding() {
  local deadline=$((SECONDS + $2))
  until seeding "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "no complete download within $2 s" >&2; exit 1; }
    sleep 0.01
  done
}
# The leecher's `download-total` of torrent 1.
total() {
  local r
  r=$(tripc --socket "$1" call get-status '{"id":[1],"type":["download-total"]}')
  [[ $r =~ \"download-total\":([0-9]+) ]] || { echo "no download-total in: $r" >&2; exit 1; }
  printf '%s' "${BASH_REMATCH[1]}"
}
# The daemon copies its transfer counters to `get-status` once a second,
# so a figure read at an arbitrary moment is up to 1 s old (5% of 20 s).
# This reads download-total at the first refresh from now on: it prints
# "TIME BYTES" of the first request that saw a new figure (TIME taken just
# before it was sent, so within one request, ~1.5 ms, of the refresh),
# after "TIME BYTES" of the plain read it started with.
edge() {
  local t0 v0 t v deadline=$((SECONDS + 5))
  t0=$(now); v0=$(total "$1")
  while :; do
    t=$(now); v=$(total "$1")
    [ "$v" = "$v0" ] || break
    [ "$SECONDS" -lt "$deadline" ] || { echo "download-total stuck at $v0 B" >&2; exit 1; }
  done
  printf '%s %s %s %s' "$t0" "$v0" "$t" "$v"
}
sleep_until() { # epoch seconds
  sleep "$(awk -v t="$1" -v n="$(now)" 'BEGIN { d = t - n; printf "%.6f", (d > 0 ? d : 0) }')"
}
plus() { awk -v a="$1" -v b="$2" -v c="${3:-0}" 'BEGIN { printf "%.6f", a + b + c }'; }

# --- 1. speed limits
start_tripcd ls "$work/seed"; ls_pid=$pid_; ls_sock=$sock_
tripc --socket "$ls_sock" -a "$work/limit.torrent" >/dev/null
wait_for "seeding '$ls_sock'" 300
: > limits.txt
n=0
# One case: a fresh leecher, limited by `-d L` or the seeder by `-u L`.
limit_case() { # down|up L
  n=$((n + 1))
  mkdir -p "ll$n-data"
  start_tripcd "ll$n" "$work/ll$n-data"
  local l_pid=$pid_ l_sock=$sock_
  if [ "$1" = down ]; then
    tripc --socket "$l_sock" -d "$2" >/dev/null
  else
    tripc --socket "$ls_sock" -u "$2" >/dev/null
  fi
  local t_add a b ta state
  t_add=$(now)
  tripc --socket "$l_sock" -a "$work/limit.torrent" >/dev/null
  sleep_until "$(plus "$t_add" "$warm")"
  a=$(edge "$l_sock")
  read -r _ _ ta _ <<<"$a"
  # Meanwhile a plain read every 0.25 s, for the figure of each refresh
  # (about a second's worth) in the raw samples. The refresh due at
  # t0 + SECONDS comes a little late (the daemon's timer only fires after
  # its due time), so look for it from just before.
  local end series=""
  end=$(plus "$ta" "$seconds" -0.2)
  while awk -v e="$end" -v n="$(now)" 'BEGIN { exit !(n < e - 0.25) }'; do
    sleep 0.25
    series+=" $(total "$l_sock")"
  done
  sleep_until "$end"
  b=$(edge "$l_sock")
  state=$(tripc --socket "$l_sock" call get-status '{"id":[1],"type":["state"]}')
  case "$state" in *seeding*) echo "$1 $2: the leecher ran out of data" >&2; exit 1 ;; esac
  echo "$1 $2 $a $b$series" >> limits.txt
  if [ "$1" = up ]; then tripc --socket "$ls_sock" -U >/dev/null; fi
  stop_tripcd "$l_sock" "$l_pid"
  rm -rf "ll$n-data"
}
for l in "${limits[@]}"; do
  limit_case down "$l"
  limit_case up "$l"
done
# The reference: the same pair with no limit, the whole torrent.
mkdir -p lr-data
start_tripcd lr "$work/lr-data"; lr_pid=$pid_; lr_sock=$sock_
tr0=$(now)
tripc --socket "$lr_sock" -a "$work/limit.torrent" >/dev/null
until_seeding "$lr_sock" 600
tr1=$(now)
cmp -s seed/limit.bin lr-data/limit.bin || { echo "unlimited reference: files differ" >&2; exit 1; }
stop_tripcd "$lr_sock" "$lr_pid"
stop_tripcd "$ls_sock" "$ls_pid"
rm -rf lr-data

# --- 2. encryption
: > enc.txt
enc_case() { # required|plaintext
  local log=warn,tripcd::swarm=debug
  start_tripcd "es-$1" "$work/seed" "$log"
  local s_pid=$pid_ s_sock=$sock_
  tripc --socket "$s_sock" --encryption "$1" -a "$work/enc.torrent" >/dev/null
  wait_for "seeding '$s_sock'" 300
  mkdir -p "el-$1-data"
  start_tripcd "el-$1" "$work/el-$1-data" "$log"
  local l_pid=$pid_ l_sock=$sock_
  tripc --socket "$l_sock" --encryption "$1" >/dev/null
  local cs0 cl0 t0 t1
  cs0=$(cpu "$s_pid"); cl0=$(cpu "$l_pid")
  t0=$(now)
  tripc --socket "$l_sock" -a "$work/enc.torrent" >/dev/null
  until_seeding "$l_sock" 600
  t1=$(now)
  echo "$1 $t0 $t1 $cs0 $(cpu "$s_pid") $cl0 $(cpu "$l_pid")" >> enc.txt
  cmp -s seed/enc.bin "el-$1-data/enc.bin" || { echo "encryption $1: files differ" >&2; exit 1; }
  stop_tripcd "$l_sock" "$l_pid"
  stop_tripcd "$s_sock" "$s_pid"
  local want=encrypted other=plaintext
  [ "$1" = required ] || { want=plaintext; other=encrypted; }
  if ! grep -q "handshake done for torrent 1 ($want)" "el-$1.log" ||
    grep -q "handshake done for torrent 1 ($other)" "el-$1.log"; then
    echo "encryption $1: the leecher's connections were not all $want:" >&2
    grep "handshake done" "el-$1.log" >&2 || echo "(no handshake logged)" >&2
    exit 1
  fi
  rm -rf "el-$1-data"
}
enc_case required
enc_case plaintext

python3 - "$seconds" "$warm" "$limit_mib" "$tr0" "$tr1" "$size_mib" <<'EOF'
import sys
seconds, warm, limit_mib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tr0, tr1 = float(sys.argv[4]), float(sys.argv[5])
size = float(sys.argv[6])
rows = [l.split() for l in open("limits.txt")]
print(f"Speed limits ({limit_mib} MiB torrent, 256 KiB pieces; payload rate from the leecher's "
      f"download-total, after {warm} s of warm-up):")
print()
print("| limit | set on | KiB/s | measured KiB/s | error | over |")
print("|---|---|---:|---:|---:|---:|")
raw = []
for side, lim, ta0, va0, ta, va, tb0, vb0, tb, vb, *series in rows:
    lim = int(lim)
    ta0, ta, tb0, tb = map(float, (ta0, ta, tb0, tb))
    va0, va, vb0, vb = map(int, (va0, va, vb0, vb))
    rate = (vb - va) / 1024 / (tb - ta)
    err = (rate - lim) / lim * 100
    who = "leecher" if side == "down" else "seeder"
    key = "downlimit" if side == "down" else "uplimit"
    print(f"| `{key}` | {who} | {lim} | {rate:.1f} | {err:+.2f}% | {tb - ta:.2f} s |")
    raw.append(f"{key} {lim}: t0 {ta:.6f} {va} B (before: {va0} B), "
               f"t1 {tb:.6f} {vb} B (before: {vb0} B)")
    figs = [va]
    for v in map(int, series + [vb]):
        if v != figs[-1]:
            figs.append(v)
    steps = " ".join(str(round((b - a) / 1024)) for a, b in zip(figs, figs[1:]))
    raw.append(f"  KiB per refresh (about 1 s each): {steps}")
ref = limit_mib * 1024 / (tr1 - tr0)
print(f"| none (reference) | - | - | {ref:.0f} | - | {tr1 - tr0:.2f} s (whole torrent) |")
print()
print("Raw samples: epoch seconds and download-total at the first refresh after each "
      "sample time, and the figure before that refresh:")
for r in raw:
    print("  " + r)
print()
print(f"Encryption, unlimited, {size:.0f} MiB, tripcd -> tripcd, same mode on both sides:")
print()
print("| encryption | MiB/s | seconds | seeder cpu s | leecher cpu s | MiB per cpu s |")
print("|---|---:|---:|---:|---:|---:|")
for l in open("enc.txt"):
    mode, t0, t1, s0, s1, l0, l1 = l.split()
    t0, t1, s0, s1, l0, l1 = map(float, (t0, t1, s0, s1, l0, l1))
    d, cs, cl = t1 - t0, s1 - s0, l1 - l0
    label = "required (MSE, RC4)" if mode == "required" else mode
    print(f"| {label} | {size / d:.1f} | {d:.2f} | {cs:.2f} | {cl:.2f} | {size / (cs + cl):.0f} |")
EOF
