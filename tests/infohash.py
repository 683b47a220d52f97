#!/usr/bin/env python3
"""Prints the info hash (40 hex digits) of the metainfo file given: the
SHA-1 of its `info` dict's exact bytes. For the interop and benchmark
scripts, which must whitelist it in opentracker."""
import hashlib
import sys


def skip(b, i):
    """The offset just past the bencoded value starting at `i`."""
    c = b[i:i + 1]
    if c == b"i":
        return b.index(b"e", i) + 1
    if c in (b"l", b"d"):
        i += 1
        while b[i:i + 1] != b"e":
            i = skip(b, i)
        return i + 1
    n = b.index(b":", i)
    return n + 1 + int(b[i:n])


data = open(sys.argv[1], "rb").read()
start = data.index(b"4:info") + 6
print(hashlib.sha1(data[start:skip(data, start)]).hexdigest())
