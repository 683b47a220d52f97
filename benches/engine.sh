#!/usr/bin/env bash
# The engine benchmark: loopback transfers of a SIZE MiB torrent, leecher
# fresh and empty each time, for each pair of clients:
#   tripcd -> tripcd          payload in plaintext (`encryption tolerated`
#                             on both; the MSE handshake is not used)
#   tripcd-rc4 -> tripcd-rc4  `encryption required` on both: MSE, RC4
#   libtorrent -> libtorrent  Debian's python3-libtorrent 2.0 through
#                             benches/lt_pair.py, high_performance_seed()
#   aria2 -> aria2            Debian's aria2c 1.36, defaults
# all through one opentracker, ROUNDS rounds (default 3) with the pairs
# interleaved (each round starts one pair later). tripcd-bench engine watch
# times each transfer, reads both sides' CPU time and, for tripcd, keeps 50
# IPC clients sending tagged `noop` to the leecher for exactly as long as the
# transfer lasts; tripcd-bench engine report prints the medians.
#   benches/engine.sh [SIZE_MIB...]            default: 512 2048
#   ROUNDS=1 PAIRS="tripcd libtorrent" benches/engine.sh 512
# Results in $OUT (default target/engine-bench): runs/*.json (one per
# transfer, with its samples), summary.md, summary.json, runs.csv and
# engine-SIZE.svg (throughput over time of each pair's median run).
# Needs Debian's opentracker, aria2, mktorrent and python3-libtorrent.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
read -ra sizes <<<"${*:-512 2048}"
rounds="${ROUNDS:-3}"
read -ra pairs <<<"${PAIRS:-tripcd tripcd-rc4 libtorrent aria2}"
out="$(realpath -m "${OUT:-target/engine-bench}")"
ipc_clients="${IPC_CLIENTS:-50}"
cargo build --release -q --bin tripcd --bin tripc --bin tripcd-bench
bin="$repo/target/release"
. "$repo/tests/swarm-lib.sh"
rm -rf "$out"
mkdir -p "$out/runs"
cd "$work"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)" | tee "$out/machine.txt"

tracker_port=$(free_port)
announce="http://127.0.0.1:$tracker_port/announce"
# One torrent per pair and size (the data hard-linked under each pair's
# name), so each pair's seeder is the only peer its leecher finds.
mkdir -p seed
: > whitelist
for size in "${sizes[@]}"; do
  head -c "$((size << 20))" /dev/urandom > "seed/data-$size.bin"
  for pair in "${pairs[@]}"; do
    name="$pair-$size.bin"
    ln "seed/data-$size.bin" "seed/$name"
    # 1 MiB pieces: 512 or 2048 pieces, as a client would choose.
    mktorrent -a "$announce" -l 20 -n "$name" -o "$pair-$size.torrent" "seed/$name" >/dev/null
    python3 "$repo/tests/infohash.py" "$pair-$size.torrent" >> whitelist
  done
done
chmod 644 whitelist
opentracker -i 127.0.0.1 -p "$tracker_port" -P "$tracker_port" -d / -w "$work/whitelist" >/dev/null 2>&1 &
pids+=($!)

tripc() { "$bin/tripc" "$@"; }
seeding() { tripc --socket "$1" -l | grep -q seeding; }
encryption_of() { case "$1" in tripcd-rc4) echo required ;; *) echo tolerated ;; esac; }
start_tripcd() { # name data-dir encryption -> sets pid_, sock_
  mkdir -p "$work/$1"
  RUST_LOG=warn "$bin/tripcd" --state-dir "$work/$1" --download-dir "$2" --peer-bind 127.0.0.1 --no-dht --no-rpc \
    --idle-timeout 0 2>"$work/$1.log" &
  pids+=($!)
  pid_=$!
  sock_="$work/$1/socket"
  wait_for "[ -S '$sock_' ]" 10
  tripc --socket "$sock_" -p "$(free_port)" --encryption "$3" >/dev/null
}
stop_tripcd() { tripc --socket "$1" -q >/dev/null 2>&1 || true; }

# The seeders of one size: pid and how to stop it, per pair.
declare -A seed_pid seed_stop
start_seeders() { # size
  local size=$1 pair
  for pair in "${pairs[@]}"; do
    case "$pair" in
      tripcd*)
        start_tripcd "seed-$pair-$size" "$work/seed" "$(encryption_of "$pair")"
        tripc --socket "$sock_" -a "$work/$pair-$size.torrent" >/dev/null
        wait_for "seeding '$sock_'" 600
        seed_pid[$pair]=$pid_
        seed_stop[$pair]="stop_tripcd '$sock_'"
        ;;
      libtorrent)
        mkfifo "lt-seed-$size.in"
        /usr/bin/python3 "$repo/benches/lt_pair.py" seed "$work/$pair-$size.torrent" "$work/seed" \
          "$(free_port)" <"lt-seed-$size.in" >"lt-seed-$size.out" 2>"lt-seed-$size.log" &
        pids+=($!)
        seed_pid[$pair]=$!
        # Holding the fifo open keeps the seeder alive; closing it ends it.
        exec {lt_fd}>"lt-seed-$size.in"
        seed_stop[$pair]="exec $lt_fd>&-"
        wait_for "grep -q ready 'lt-seed-$size.out'" 600
        ;;
      aria2)
        local rpc
        rpc=$(free_port)
        aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
          --enable-peer-exchange=false --listen-port="$(free_port)" --quiet \
          --file-allocation=none --dir="$work/seed" --seed-ratio=0 -V \
          --enable-rpc --rpc-listen-port="$rpc" "$work/$pair-$size.torrent" \
          >"aria2-seed-$size.log" 2>&1 &
        pids+=($!)
        seed_pid[$pair]=$!
        seed_stop[$pair]="kill ${seed_pid[$pair]}"
        # Seeding once its check is done: aria2 says so over its RPC.
        wait_for "python3 '$repo/benches/aria2_seeding.py' $rpc" 600
        ;;
      *) echo "engine.sh: unknown pair $pair" >&2; exit 2 ;;
    esac
  done
}
stop_seeders() {
  local pair
  for pair in "${pairs[@]}"; do eval "${seed_stop[$pair]}"; done
  wait_for "! kill -0 ${seed_pid[*]} 2>/dev/null" 30 || kill "${seed_pid[@]}" 2>/dev/null || true
}

# One timed transfer: a fresh, empty leecher of PAIR downloads SIZE.
transfer() { # pair size round
  local pair=$1 size=$2 round=$3 dir="$work/leech-$1-$2-$3"
  local common=(--pair "$pair" --size-mib "$size" --run "$round" --file "$dir/$pair-$size.bin"
    --seeder-pid "${seed_pid[$pair]}" --out "$out/runs/$size-$pair-$round.json")
  mkdir -p "$dir"
  case "$pair" in
    tripcd*)
      start_tripcd "leech-$pair-$size-$round" "$dir" "$(encryption_of "$pair")"
      local l_pid=$pid_ l_sock=$sock_
      "$bin/tripcd-bench" engine watch "${common[@]}" --until tripcd --socket "$l_sock" \
        --leecher-pid "$l_pid" --ipc-clients "$ipc_clients" -- "$bin/tripc" --socket "$l_sock" \
        -a "$work/$pair-$size.torrent"
      stop_tripcd "$l_sock"
      ;;
    libtorrent)
      "$bin/tripcd-bench" engine watch "${common[@]}" --until line -- \
        /usr/bin/python3 "$repo/benches/lt_pair.py" leech "$work/$pair-$size.torrent" "$dir" "$(free_port)"
      ;;
    aria2)
      "$bin/tripcd-bench" engine watch "${common[@]}" --until exit -- \
        aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
        --enable-peer-exchange=false --listen-port="$(free_port)" --quiet \
        --file-allocation=none --dir="$dir" --seed-time=0 "$work/$pair-$size.torrent"
      ;;
  esac
  cmp -s "seed/data-$size.bin" "$dir/$pair-$size.bin" || { echo "$pair $size MiB: the files differ" >&2; exit 1; }
  rm -rf "$dir"
  # Each transfer starts with the last one's writes on disk and the
  # kernel done freeing its pages.
  sync
  sleep 2
}

for size in "${sizes[@]}"; do
  # The seeders read from the page cache in every run.
  cat "seed/data-$size.bin" >/dev/null
  start_seeders "$size"
  for ((round = 1; round <= rounds; round++)); do
    n=${#pairs[@]}
    for ((i = 0; i < n; i++)); do
      transfer "${pairs[$(((i + round - 1) % n))]}" "$size" "$round"
    done
  done
  stop_seeders
  rm -f "seed/data-$size.bin" seed/*-"$size".bin
done

echo
"$bin/tripcd-bench" engine report "$out"
echo
echo "results in $out"
