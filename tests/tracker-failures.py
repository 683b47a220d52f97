#!/usr/bin/env python3
# Every tracker failure mode against one tripcd, and what a user sees:
# `tripc -l` (the error line under each torrent) and the log lines.
# Local servers only (HTTP, a silent TCP port, a UDP tracker answering
# errors, TLS with an untrusted self-signed certificate via openssl).
#   cargo build && python3 tests/tracker-failures.py [TIMEOUT_SECS [WAIT_SECS]]
import hashlib, os, socket, ssl, struct, subprocess, sys, threading, time, http.server, socketserver
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "debug")
import tempfile
work = tempfile.mkdtemp(prefix="tracker-failures-"); os.makedirs(f"{work}/data")
def be(v):
    if isinstance(v, int): return b"i%de" % v
    if isinstance(v, str): v = v.encode()
    if isinstance(v, bytes): return b"%d:" % len(v) + v
    if isinstance(v, list): return b"l" + b"".join(be(x) for x in v) + b"e"
    if isinstance(v, dict): return b"d" + b"".join(be(k) + be(v[k]) for k in sorted(v)) + b"e"
def torrent(name, url):
    data = (name.encode() * 1000)[:20000]
    os.makedirs(f"{work}/data", exist_ok=True)
    open(f"{work}/data/{name}", "wb").write(data)
    info = {"name": name, "length": len(data), "piece length": 16384,
            "pieces": b"".join(hashlib.sha1(data[i:i+16384]).digest() for i in range(0, len(data), 16384))}
    path = f"{work}/{name}.torrent"
    open(path, "wb").write(be({"announce": url, "info": info}))
    return path
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/garbage/announce": self.reply(200, b"<html><body>502 Bad Gateway</body></html>")
        elif p == "/e404/announce": self.reply(404, b"no")
        elif p == "/e500/announce": self.reply(500, b"oops")
        elif p == "/refuse/announce": self.reply(200, be({"failure reason": "torrent not registered with this tracker"}))
        elif p == "/warn/announce": self.reply(200, be({"interval": 1800, "peers": b"", "warning message": "please upgrade your client"}))
        elif p == "/loop/announce":
            self.send_response(302); self.send_header("Location", "/loop/announce?x=1"); self.send_header("Content-Length", "0"); self.end_headers()
        else: self.reply(404, b"")
    def reply(self, code, body):
        self.send_response(code); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
httpd = S(("127.0.0.1", 0), H); hp = httpd.server_address[1]
threading.Thread(target=httpd.serve_forever, daemon=True).start()
# TLS with a self-signed certificate nobody trusts
os.system(f"openssl req -x509 -newkey rsa:2048 -nodes -keyout {work}/k.pem -out {work}/c.pem -days 1 -subj /CN=127.0.0.1 2>/dev/null")
tlsd = S(("127.0.0.1", 0), H); ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(f"{work}/c.pem", f"{work}/k.pem")
tlsd.socket = ctx.wrap_socket(tlsd.socket, server_side=True); tp = tlsd.server_address[1]
threading.Thread(target=tlsd.serve_forever, daemon=True).start()
# a TCP server that accepts and never answers
hang = socket.socket(); hang.bind(("127.0.0.1", 0)); hang.listen(16); hgp = hang.getsockname()[1]
held = []
threading.Thread(target=lambda: [held.append(hang.accept()) for _ in iter(int, 1)], daemon=True).start()
# a UDP tracker answering every request with an error action
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); up = u.getsockname()[1]
def udp_err():
    while True:
        d, a = u.recvfrom(2048)
        if len(d) >= 16: u.sendto(struct.pack(">II", 3, struct.unpack(">I", d[12:16])[0]) + b"info hash not allowed", a)
threading.Thread(target=udp_err, daemon=True).start()
modes = [
    ("refused", f"http://127.0.0.1:{free()}/announce"),
    ("hangs", f"http://127.0.0.1:{hgp}/announce"),
    ("garbage", f"http://127.0.0.1:{hp}/garbage/announce"),
    ("http404", f"http://127.0.0.1:{hp}/e404/announce"),
    ("http500", f"http://127.0.0.1:{hp}/e500/announce"),
    ("redirectloop", f"http://127.0.0.1:{hp}/loop/announce"),
    ("failure", f"http://127.0.0.1:{hp}/refuse/announce"),
    ("warning", f"http://127.0.0.1:{hp}/warn/announce"),
    ("nohost", "http://tracker.invalid/announce"),
    ("udpsilent", f"udp://127.0.0.1:{free()}/announce"),
    ("udperror", f"udp://127.0.0.1:{up}/announce"),
    ("untrusted", f"https://127.0.0.1:{tp}/announce"),
    ("scheme", "wss://127.0.0.1:1/announce"),
]
log = open(f"{work}/tripcd.log", "w")
d = subprocess.Popen([f"{BIN}/tripcd", "--state-dir", f"{work}/state", "--download-dir", f"{work}/data",
    "--peer-bind", "127.0.0.1", "--tracker-timeout", sys.argv[1] if len(sys.argv) > 1 else "8"], stderr=log, env=dict(os.environ, RUST_LOG="info"))
sock = f"{work}/state/socket"
while not os.path.exists(sock): time.sleep(0.05)
tripc = lambda *a: subprocess.run([f"{BIN}/tripc", "--socket", sock, *a], capture_output=True, text=True).stdout
tripc("-p", str(free()))
t0 = time.time()
for name, url in modes: tripc("-a", torrent(name, url))
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 12)
print(tripc("-l"))
d.terminate(); d.wait(); log.close()
print("".join(l for l in open(f"{work}/tripcd.log") if "tracker" in l or "announce" in l or "scrape" in l))
import shutil; shutil.rmtree(work, ignore_errors=True)
