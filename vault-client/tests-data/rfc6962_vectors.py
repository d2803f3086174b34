#!/usr/bin/env python3
"""Known-answer vectors for RFC 6962 Merkle tree hashing, written by an
implementation independent of vault-client's Rust code (Python 3, hashlib
only), for `vault_client::audit`'s tests.

    python3 rfc6962_vectors.py > rfc6962_vectors.json

Leaves: the eight leaves of the Certificate Transparency reference tests.
The script computes, for every tree of 1 to 8 of them:

- the root of every prefix (0 to 8 leaves), by the recursive definition of
  RFC 6962 section 2.1 (MTH);
- every inclusion proof (index, size), by the recursive PATH of RFC 6962
  section 2.1.1;
- every consistency proof (first, second) with 1 <= first <= second, by
  the recursive PROOF/SUBPROOF of RFC 6962 section 2.1.2;
- for each proof, tampered variants (a flipped byte in a proof element, in
  the leaf hash or in a root, a wrong index or size, a dropped or an extra
  proof element) with the outcome that a recursive verifier of this script
  (which rebuilds the roots along the recursive definitions, not the
  iterative algorithms of RFC 9162 that the Rust code uses) gives them.

A tamper entry is `[kind, argument, valid]`:

- `["flip", [element, byte], false]`: proof element `element`, byte `byte`
  XOR 0x01;
- `["flip_leaf", byte, false]` (inclusion): the leaf hash, byte XOR 0x01;
- `["flip_root", byte, false]` / `["flip_first_root", byte, false]` /
  `["flip_second_root", byte, false]`: the (second or first) root;
- `["index", i, valid]` (inclusion): the proof checked for index i;
- `["size", n, valid]`: checked for tree size n (inclusion), or second
  size n (consistency);
- `["first", m, valid]` (consistency): checked for first size m;
- `["drop_last", null, false]`: the last proof element removed;
- `["append", null, false]`: the second root appended to the proof.

A wrong size is not always refused: a proof's shape (which side each
element is hashed on) can be the same for several tree sizes, e.g. the
inclusion proof of leaf 0 in a tree of 5 and of 6 leaves; such entries say
`true`, and the Rust verifier must agree on every entry.
"""

import hashlib
import json
import sys

LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]

MAX_SIZE = len(LEAVES)
# Wrong sizes and indices tried, beyond the right ones.
MAX_TAMPERED_SIZE = MAX_SIZE + 1


def sha256(data):
    return hashlib.sha256(data).digest()


def leaf_hash(leaf):
    return sha256(b"\x00" + leaf)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def split(n):
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves):
    """RFC 6962 section 2.1: the Merkle Tree Hash of a list of leaves."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaf_hash(leaves[0])
    k = split(n)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    """RFC 6962 section 2.1.1: PATH(m, D[n]), the audit path of leaf m,
    from the leaf's sibling up to the root's child."""
    n = len(leaves)
    if n == 1:
        return []
    k = split(n)
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m, leaves, b):
    """RFC 6962 section 2.1.2: SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if b else [mth(leaves)]
    k = split(n)
    if m <= k:
        return subproof(m, leaves[:k], b) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def consistency(m, leaves):
    """RFC 6962 section 2.1.2: PROOF(m, D[n]), for 0 < m <= n."""
    return subproof(m, leaves, True)


class Refused(Exception):
    pass


def root_from_path(index, size, leaf, proof):
    """Rebuilds the root from an inclusion proof along the recursive
    definition of PATH; raises Refused if the proof cannot be one."""
    if size == 1:
        if proof:
            raise Refused("proof too long")
        return leaf
    if not proof:
        raise Refused("proof too short")
    k = split(size)
    if index < k:
        return node_hash(root_from_path(index, k, leaf, proof[:-1]), proof[-1])
    return node_hash(proof[-1], root_from_path(index - k, size - k, leaf, proof[:-1]))


def verify_inclusion(index, size, leaf, proof, root):
    if size < 1 or index < 0 or index >= size:
        return False
    try:
        return root_from_path(index, size, leaf, proof) == root
    except Refused:
        return False


def roots_from_subproof(m, n, proof, first_root, b):
    """Rebuilds (first root, second root) from a consistency proof along the
    recursive definition of SUBPROOF; raises Refused if it cannot be one."""
    if m == n:
        if b:
            if proof:
                raise Refused("proof too long")
            return first_root, first_root
        if len(proof) != 1:
            raise Refused("proof of the wrong length")
        return proof[0], proof[0]
    if not proof:
        raise Refused("proof too short")
    k = split(n)
    last = proof[-1]
    if m <= k:
        old, new = roots_from_subproof(m, k, proof[:-1], first_root, b)
        return old, node_hash(new, last)
    old, new = roots_from_subproof(m - k, n - k, proof[:-1], first_root, False)
    return node_hash(last, old), node_hash(last, new)


def verify_consistency(m, n, proof, first_root, second_root):
    if m < 1 or m > n:
        return False
    try:
        old, new = roots_from_subproof(m, n, proof, first_root, True)
    except Refused:
        return False
    return old == first_root and new == second_root


def flipped(h, byte):
    b = bytearray(h)
    b[byte] ^= 0x01
    return bytes(b)


def with_flip(proof, element, byte):
    proof = list(proof)
    proof[element] = flipped(proof[element], byte)
    return proof


def hexes(hashes):
    return [h.hex() for h in hashes]


def inclusion_vectors(roots):
    vectors = []
    for size in range(1, MAX_SIZE + 1):
        tree = LEAVES[:size]
        root = roots[size]
        for index in range(size):
            leaf = leaf_hash(LEAVES[index])
            proof = path(index, tree)
            assert verify_inclusion(index, size, leaf, proof, root)
            tampered = []
            for element in range(len(proof)):
                byte = (element * 7 + index) % 32
                bad = with_flip(proof, element, byte)
                tampered.append(
                    ["flip", [element, byte], verify_inclusion(index, size, leaf, bad, root)]
                )
            byte = (index * 5 + size) % 32
            tampered.append(
                ["flip_leaf", byte, verify_inclusion(index, size, flipped(leaf, byte), proof, root)]
            )
            tampered.append(
                ["flip_root", byte, verify_inclusion(index, size, leaf, proof, flipped(root, byte))]
            )
            for other in range(MAX_TAMPERED_SIZE + 1):
                if other != index:
                    tampered.append(
                        ["index", other, verify_inclusion(other, size, leaf, proof, root)]
                    )
            for other in range(1, MAX_TAMPERED_SIZE + 1):
                if other != size:
                    tampered.append(
                        ["size", other, verify_inclusion(index, other, leaf, proof, root)]
                    )
            if proof:
                tampered.append(
                    ["drop_last", None, verify_inclusion(index, size, leaf, proof[:-1], root)]
                )
            tampered.append(
                ["append", None, verify_inclusion(index, size, leaf, proof + [root], root)]
            )
            for kind, _, valid in tampered:
                # Only a wrong size may keep a proof valid (see the docstring).
                assert kind == "size" or not valid, (index, size, kind)
            vectors.append(
                {
                    "index": index,
                    "size": size,
                    "leaf_hash": leaf.hex(),
                    "root": root.hex(),
                    "proof": hexes(proof),
                    "tampered": tampered,
                }
            )
    return vectors


def consistency_vectors(roots):
    vectors = []
    for second in range(1, MAX_SIZE + 1):
        for first in range(1, second + 1):
            proof = consistency(first, LEAVES[:second])
            r1, r2 = roots[first], roots[second]
            assert verify_consistency(first, second, proof, r1, r2)
            tampered = []
            for element in range(len(proof)):
                byte = (element * 11 + first) % 32
                bad = with_flip(proof, element, byte)
                tampered.append(
                    ["flip", [element, byte], verify_consistency(first, second, bad, r1, r2)]
                )
            byte = (first * 3 + second) % 32
            tampered.append(
                [
                    "flip_first_root",
                    byte,
                    verify_consistency(first, second, proof, flipped(r1, byte), r2),
                ]
            )
            tampered.append(
                [
                    "flip_second_root",
                    byte,
                    verify_consistency(first, second, proof, r1, flipped(r2, byte)),
                ]
            )
            for other in range(1, MAX_TAMPERED_SIZE + 1):
                if other != first:
                    tampered.append(
                        ["first", other, verify_consistency(other, second, proof, r1, r2)]
                    )
                if other != second:
                    tampered.append(
                        ["size", other, verify_consistency(first, other, proof, r1, r2)]
                    )
            if proof:
                tampered.append(
                    ["drop_last", None, verify_consistency(first, second, proof[:-1], r1, r2)]
                )
            tampered.append(
                ["append", None, verify_consistency(first, second, proof + [r2], r1, r2)]
            )
            for kind, _, valid in tampered:
                assert kind in ("size", "first") or not valid, (first, second, kind)
            vectors.append(
                {
                    "first": first,
                    "second": second,
                    "first_root": r1.hex(),
                    "second_root": r2.hex(),
                    "proof": hexes(proof),
                    "tampered": tampered,
                }
            )
    return vectors


def main():
    roots = [mth(LEAVES[:n]) for n in range(MAX_SIZE + 1)]
    # The Certificate Transparency reference roots of these leaves.
    assert roots[0].hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert roots[8].hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    document = {
        "generator": "vault-client/tests-data/rfc6962_vectors.py",
        "hash": "SHA-256; leaf = H(0x00 || leaf), node = H(0x01 || left || right)",
        "leaves": [leaf.hex() for leaf in LEAVES],
        "roots": [{"size": n, "root": roots[n].hex()} for n in range(MAX_SIZE + 1)],
        "inclusion": inclusion_vectors(roots),
        "consistency": consistency_vectors(roots),
    }
    # One vector per line: readable diffs, a file of modest size.
    out = sys.stdout
    out.write("{\n")
    keys = list(document)
    for position, key in enumerate(keys):
        value = document[key]
        out.write(f"  {json.dumps(key)}: ")
        if isinstance(value, list) and value and isinstance(value[0], dict):
            out.write("[\n")
            for i, item in enumerate(value):
                comma = "," if i + 1 < len(value) else ""
                out.write(f"    {json.dumps(item, separators=(',', ':'))}{comma}\n")
            out.write("  ]")
        else:
            out.write(json.dumps(value))
        out.write(",\n" if position + 1 < len(keys) else "\n")
    out.write("}\n")


if __name__ == "__main__":
    main()
