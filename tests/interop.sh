#!/usr/bin/env bash
# Interop with real BitTorrent clients on loopback (not part of `cargo
# test`; .ci/run runs it after installing Debian's opentracker, aria2,
# transmission-daemon, transmission-cli, mktorrent and python3-libtorrent):
#   - tripcd downloads from aria2c seeding, and seeds to aria2c;
#   - tripcd downloads from transmission-daemon seeding, and seeds to it;
#   - the same with transmission over opentracker's UDP tracker;
#   - the same with transmission and tripcd both requiring encryption
#     (MSE), checked in tripcd's log;
#   - tripcd downloads from libtorrent (python3-libtorrent 2.0, through
#     benches/lt_pair.py) seeding, and seeds to libtorrent, tripcd in its
#     default encryption mode (MSE offered, libtorrent choosing plaintext);
# through opentracker over HTTP (UDP in the last part), files compared byte
# for byte, and tripcd's scrape figures checked against what opentracker
# knows.
# Loopback quirks: Debian's opentracker serves only whitelisted hashes
# (-w) and chroots unless given -d /; transmission 3.00 never dials 127.x
# peers a tracker names, so tripcd dials it (it accepts incoming).
#   tests/interop.sh            (builds tripcd in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
cargo build --release --bin tripcd --bin tripc
bin="$PWD/target/release"
. "$repo/tests/swarm-lib.sh"
cd "$work"

fail() { echo "interop: FAILED: $*" >&2; exit 1; }

# A 24 MiB payload in two files, 256 KiB pieces.
mkdir -p payload/set
head -c 16000000 /dev/urandom > payload/set/a.bin
head -c 9000001 /dev/urandom > payload/set/b.bin
tracker_port=$(free_port)
announce="http://127.0.0.1:$tracker_port/announce"
mktorrent -a "$announce" -l 18 -o set.torrent payload/set >/dev/null
hash=$(python3 "$repo/tests/infohash.py" set.torrent)
echo "$hash" > whitelist
# The UDP part's torrent: other bytes, so another swarm.
mkdir -p udp-payload/udpset
head -c 12000000 /dev/urandom > udp-payload/udpset/c.bin
mktorrent -a "udp://127.0.0.1:$tracker_port/announce" -l 18 -o udp.torrent udp-payload/udpset >/dev/null
python3 "$repo/tests/infohash.py" udp.torrent >> whitelist
# The encryption part's torrent.
mkdir -p enc-payload/encset
head -c 10000000 /dev/urandom > enc-payload/encset/d.bin
mktorrent -a "$announce" -l 18 -o enc.torrent enc-payload/encset >/dev/null
python3 "$repo/tests/infohash.py" enc.torrent >> whitelist
# The libtorrent part's torrent.
mkdir -p lt-payload/ltset
head -c 9000000 /dev/urandom > lt-payload/ltset/e.bin
head -c 100 /dev/urandom > lt-payload/ltset/f.bin
mktorrent -a "$announce" -l 18 -o lt.torrent lt-payload/ltset >/dev/null
python3 "$repo/tests/infohash.py" lt.torrent >> whitelist
# opentracker drops to user nobody before it reads the whitelist.
chmod 644 whitelist
opentracker -i 127.0.0.1 -p "$tracker_port" -P "$tracker_port" -d / -w "$work/whitelist" >opentracker.log 2>&1 &
pids+=($!)


# Every file below directory $1 is in $2, byte for byte.
same() {
  local f
  while IFS= read -r f; do
    cmp -s "$1/$f" "$2/$f" || return 1
  done < <(cd "$1" && find . -type f)
}

# A tripcd on a fresh state directory with data in $2 and torrent $3
# (set.torrent by default), in encryption mode $TRIPCD_ENCRYPTION if set;
# prints nothing, sets $tripcd_sock.
start_tripcd() {
  local name=$1 data=$2 torrent=${3:-set.torrent} port
  port=$(free_port)
  mkdir -p "$name" "$data"
  RUST_LOG="${TRIPCD_LOG:-info}" "$bin/tripcd" --state-dir "$work/$name" --download-dir "$data" \
    --peer-bind 127.0.0.1 ${TRIPCD_DHT:---no-dht} --no-rpc 2>"$work/$name.log" &
  pids+=($!)
  tripcd_sock="$work/$name/socket"
  wait_for "[ -S '$tripcd_sock' ]" 10 || fail "$name did not start"
  "$bin/tripc" --socket "$tripcd_sock" -p "$port" >/dev/null
  if [ -n "${TRIPCD_ENCRYPTION:-}" ]; then
    "$bin/tripc" --socket "$tripcd_sock" --encryption "$TRIPCD_ENCRYPTION" >/dev/null
  fi
  "$bin/tripc" --socket "$tripcd_sock" -a "$work/$torrent" >/dev/null
}
seeding() { "$bin/tripc" --socket "$1" -l | grep -q seeding; }
# One get-status field of torrent 1 of the tripcd at socket $1.
field() {
  "$bin/tripc" --socket "$1" --json call get-status "{\"id\":[1],\"type\":[\"$2\"]}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"][0][sys.argv[1]])' "$2"
}

echo "== tripcd downloads from aria2c"
aria2c --dir=payload --seed-ratio=0 --enable-dht=false --bt-enable-lpd=false \
  --enable-peer-exchange=false --listen-port="$(free_port)" -V --quiet set.torrent &
pids+=($!)
start_tripcd t1 "$work/t1-data"
wait_for "seeding '$tripcd_sock'" 120 || fail "tripcd did not finish downloading from aria2c"
same payload t1-data || fail "files from aria2c differ"
echo "ok"
kill "${pids[-2]}" 2>/dev/null || true  # the aria2c seeder

echo "== aria2c downloads from tripcd"
mkdir a2-data
timeout 120 aria2c --dir=a2-data --seed-time=0 --enable-dht=false --bt-enable-lpd=false \
  --enable-peer-exchange=false --listen-port="$(free_port)" --quiet set.torrent \
  || fail "aria2c did not finish downloading from tripcd"
same payload a2-data || fail "files aria2c got from tripcd differ"
echo "ok"

echo "== tripcd and transmission-daemon"
# transmission seeds a copy of the payload; a fresh tripcd downloads it.
tr_seed() { # dir rpc-port [extra transmission-daemon flags]
  local dir=$1 rpc=$2
  shift 2
  mkdir -p "$dir/config"
  transmission-daemon -f -g "$dir/config" -w "$dir/data" -p "$rpc" -P "$(free_port)" \
    --no-dht --no-lpd --no-portmap -a 127.0.0.1 -T "$@" >"$dir/log" 2>&1 &
  pids+=($!)
  wait_for "transmission-remote $rpc -l >/dev/null 2>&1" 20 || fail "transmission-daemon did not start"
}
# One part: transmission seeds torrent $2 (a copy of directory $3 is its
# data), a second, empty transmission waits, and a fresh tripcd named $4
# downloads from the first and seeds to the second (transmission does
# not dial 127.x peers, so it only gets data from a tripcd that dials it).
# $1 names the part in messages; further arguments are flags for both
# transmission-daemons.
transmission_part() {
  local part=$1 torrent=$2 payload=$3 name=$4 seed_rpc leech_rpc
  shift 4
  mkdir -p "tr-$name-seed/data" && cp -r "$payload"/. "tr-$name-seed/data/"
  seed_rpc=$(free_port)
  tr_seed "$work/tr-$name-seed" "$seed_rpc" "$@"
  transmission-remote "$seed_rpc" -a "$torrent" >/dev/null
  wait_for "transmission-remote $seed_rpc -t 1 -i | grep -q 'Percent Done: 100%'" 60 \
    || fail "transmission did not verify its copy ($part)"
  leech_rpc=$(free_port)
  tr_seed "$work/tr-$name-leech" "$leech_rpc" "$@"
  transmission-remote "$leech_rpc" -a "$torrent" >/dev/null
  # tripcd learns of it from the tracker: wait for its first announce.
  wait_for "transmission-remote $leech_rpc -t 1 -it | grep -q 'Got a list'" 60 \
    || fail "transmission did not announce ($part)"
  start_tripcd "$name" "$work/$name-data" "$torrent"
  wait_for "seeding '$tripcd_sock'" 120 || fail "tripcd did not finish downloading from transmission ($part)"
  same "$payload" "$name-data" || fail "files from transmission differ ($part)"
  echo "ok: tripcd downloaded from transmission ($part)"
  wait_for "transmission-remote $leech_rpc -t 1 -i | grep -q 'Percent Done: 100%'" 120 \
    || fail "transmission did not finish downloading from tripcd ($part)"
  same "$payload" "tr-$name-leech/data" || fail "files transmission got from tripcd differ ($part)"
  echo "ok: transmission downloaded from tripcd ($part)"
}
transmission_part "HTTP tracker" set.torrent payload t2
# opentracker counts the transmission seeder and tripcd (seeding now):
# tripcd's HTTP scrape must say so (it scrapes after each announce with an
# event, so after its `completed`).
wait_for "[ \"\$(field '$tripcd_sock' scrape-seeders)\" -ge 2 ]" 60 \
  || fail "HTTP scrape figures never showed 2 seeders: $(field "$tripcd_sock" scrape-seeders)"
echo "ok: HTTP scrape says $(field "$tripcd_sock" scrape-seeders) seeders"

echo "== tripcd and transmission-daemon over a UDP tracker"
transmission_part "UDP tracker" udp.torrent udp-payload t3
wait_for "[ \"\$(field '$tripcd_sock' scrape-seeders)\" -ge 2 ]" 60 \
  || fail "UDP scrape figures never showed 2 seeders: $(field "$tripcd_sock" scrape-seeders)"
[ "$(field "$tripcd_sock" error)" = "" ] || fail "tracker error: $(field "$tripcd_sock" error-message)"
echo "ok: UDP scrape says $(field "$tripcd_sock" scrape-seeders) seeders, completed $(field "$tripcd_sock" scrape-completed)"

echo "== tripcd and transmission-daemon, both requiring encryption"
TRIPCD_ENCRYPTION=required TRIPCD_LOG=info,tripcd::swarm=debug \
  transmission_part "both requiring encryption" enc.torrent enc-payload t5 -er
enc=$(grep -c 'handshake done for torrent 1 (encrypted)' t5.log || true)
plain=$(grep -c 'handshake done for torrent 1 (plaintext)' t5.log || true)
[ "$enc" -ge 2 ] && [ "$plain" -eq 0 ] \
  || fail "tripcd's handshakes: $enc encrypted, $plain plaintext (want both transmissions, encrypted)"
echo "ok: $enc encrypted handshakes, none in plaintext"
echo "== tripcd and libtorrent"
# lt_pair.py lives while its stdin is open (here a fifo held by the shell):
# the seeder says `ready` once its data is checked; the leecher says
# `ready`, downloads on `go`, says `done` once every piece is checked.
lt() { # role dir name: starts lt_pair.py, stdin from fifo NAME.in, stdout NAME.out
  mkfifo "$3.in"
  /usr/bin/python3 "$repo/benches/lt_pair.py" "$1" "$work/lt.torrent" "$2" "$(free_port)" \
    <"$3.in" >"$3.out" 2>"$3.log" &
  pids+=($!)
}
lt seed "$work/lt-payload" lt-seed
exec {lt_seed}>lt-seed.in
wait_for "grep -q ready lt-seed.out" 60 || fail "libtorrent did not check its data: $(cat lt-seed.log)"
start_tripcd t6 "$work/t6-data" lt.torrent
wait_for "seeding '$tripcd_sock'" 120 || fail "tripcd did not finish downloading from libtorrent"
same lt-payload t6-data || fail "files from libtorrent differ"
echo "ok: tripcd downloaded from libtorrent"
# The libtorrent seeder leaves (its stdin closes); a libtorrent leecher
# can then only get the data from tripcd.
exec {lt_seed}>&-
mkdir -p lt-leech-data
lt leech "$work/lt-leech-data" lt-leech
exec {lt_leech}>lt-leech.in
wait_for "grep -q ready lt-leech.out" 60 || fail "the libtorrent leecher did not start: $(cat lt-leech.log)"
echo go >&"$lt_leech"
wait_for "grep -q done lt-leech.out" 120 || fail "libtorrent did not finish downloading from tripcd: $(cat lt-leech.log)"
same lt-payload lt-leech-data || fail "files libtorrent got from tripcd differ"
exec {lt_leech}>&-
echo "ok: libtorrent downloaded from tripcd"
echo "interop: all passed"
