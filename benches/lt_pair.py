#!/usr/bin/python3
"""One side of the libtorrent -> libtorrent pair of benches/engine.sh.

    lt_pair.py seed  TORRENT DIR PORT    # prints `ready` once seeding
    lt_pair.py leech TORRENT DIR PORT    # `ready`; downloads on `go`; `done`

Both run until their stdin closes (the leecher on its own after `done`
then waits for that too), so `tripcd-bench engine watch --until line`
and the script that starts the seeder decide how long they live.

Settings: libtorrent's own high_performance_seed() pack, then what a
loopback swarm needs: listening on 127.0.0.1 only; DHT, LSD, UPnP,
NAT-PMP and uTP off; allow_multiple_connections_per_ip, because the
tracker lists the asking peer itself and libtorrent, dialling itself,
would otherwise ban 127.0.0.1 as a whole. Encryption stays at
libtorrent's default (handshake obfuscation offered, plaintext payload
preferred). LT_DEFAULTS=1 skips high_performance_seed() (the default
pack, for comparison).

Needs Debian's python3-libtorrent (2.0), run by /usr/bin/python3.
"""

import os
import sys
import threading
import time

import libtorrent as lt


def session(port):
    pack = lt.default_settings() if os.environ.get("LT_DEFAULTS") else lt.high_performance_seed()
    pack.update({
        "listen_interfaces": f"127.0.0.1:{port}",
        "outgoing_interfaces": "127.0.0.1",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification,
    })
    return lt.session(pack)


def add(ses, torrent, save_path):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_path
    return ses.add_torrent(atp)


def wait_until(ses, handle, ready, what, timeout):
    """Pumps alerts until ready(status) is true; exits 1 after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        st = handle.status()
        if ready(st):
            return
        if st.errc.value() != 0:
            sys.exit(f"lt_pair: {what}: {st.errc.message()}")
        if time.monotonic() > deadline:
            sys.exit(f"lt_pair: {what}: not done after {timeout} s (state {st.state}, {st.progress:.3f})")
        ses.wait_for_alert(5)
        for a in ses.pop_alerts():
            if a.category() & lt.alert.category_t.error_notification:
                print(f"lt_pair: {a.message()}", file=sys.stderr)


def wait_for_stdin_close(ses):
    """Keeps the session alive (and its alerts drained) until stdin ends."""
    closed = threading.Event()

    def read():
        for _ in sys.stdin:
            pass
        closed.set()

    threading.Thread(target=read, daemon=True).start()
    while not closed.wait(0.5):
        ses.pop_alerts()


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("seed", "leech"):
        sys.exit(__doc__)
    mode, torrent, save_path, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ses = session(port)
    if mode == "seed":
        h = add(ses, torrent, save_path)
        wait_until(ses, h, lambda st: st.is_seeding, "checking the seed's data", 1800)
        print("ready", flush=True)
        wait_for_stdin_close(ses)
        return
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("lt_pair: expected `go`")
    h = add(ses, torrent, save_path)
    # is_finished: every wanted piece downloaded and its hash checked.
    wait_until(ses, h, lambda st: st.is_finished, "downloading", 1800)
    print("done", flush=True)
    wait_for_stdin_close(ses)


if __name__ == "__main__":
    main()
