#!/usr/bin/env python3
"""Known-answer vectors for RFC 6962 Merkle trees, computed independently of
the Rust code (a second implementation, in Python, with hashlib only).

Leaves: the eight leaves of Certificate Transparency's reference tests.
For every tree size 1..8: the root; for every (index, size) the inclusion
proof (RFC 6962 2.1.1 PATH); for every (old, new) with 1 <= old <= new the
consistency proof (RFC 6962 2.1.2 PROOF). Writes rfc6962_vectors.json.
"""
import hashlib, json, os

LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
          bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]

def leaf_hash(x): return hashlib.sha256(b"\x00" + x).digest()
def node_hash(a, b): return hashlib.sha256(b"\x01" + a + b).digest()

def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k

def mth(d):
    if len(d) == 0:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return leaf_hash(d[0])
    k = split(len(d))
    return node_hash(mth(d[:k]), mth(d[k:]))

def path(m, d):
    n = len(d)
    if n == 1:
        return []
    k = split(n)
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]

def subproof(m, d, b):
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = split(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]

def proof(m, d):
    return subproof(m, d, True)

out = {"roots": {}, "inclusion": [], "consistency": []}
for n in range(1, 9):
    d = LEAVES[:n]
    out["roots"][str(n)] = mth(d).hex()
    for i in range(n):
        out["inclusion"].append({"index": i, "size": n, "path": [h.hex() for h in path(i, d)]})
    for m in range(1, n + 1):
        out["consistency"].append({"old": m, "new": n, "proof": [h.hex() for h in proof(m, d)]})

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "rfc6962_vectors.json"), "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
