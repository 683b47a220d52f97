#!/usr/bin/env python3
"""Exit status 0 if the aria2c whose JSON-RPC listens on 127.0.0.1:PORT
has a download that is seeding (its data checked), 1 otherwise.
For benches/engine.sh, which must not start the clock before then.
    aria2_seeding.py PORT"""
import json
import sys
import urllib.request

req = json.dumps({"jsonrpc": "2.0", "id": "1", "method": "aria2.tellActive",
                  "params": [["gid", "seeder", "status"]]}).encode()
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/jsonrpc", req, timeout=2) as r:
        active = json.load(r)["result"]
except (OSError, ValueError, KeyError):
    sys.exit(1)
sys.exit(0 if any(d.get("seeder") == "true" for d in active) else 1)
