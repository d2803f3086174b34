//! RFC 6962 Merkle trees (SHA-256): leaf and node hashing, the tree head,
//! inclusion proofs (§2.1.1 PATH) and consistency proofs (§2.1.2 PROOF).
//!
//! ```text
//! leaf hash  = SHA-256(0x00 ‖ leaf)
//! node hash  = SHA-256(0x01 ‖ left ‖ right)
//! MTH({})    = SHA-256("")
//! MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
//! ```
//!
//! [`Frontier`] keeps the roots of the perfect subtrees of the log (one per
//! set bit of its size) so that appending and the tree head cost O(log n).

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly less than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The tree head of the given leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion proof of leaf `index` in the tree of `leaves` (RFC 6962
/// §2.1.1), computed the plain recursive way: the reference that the
/// vectors and [`inclusion_path`] are checked against. `None` when the
/// index is out of range.
#[cfg(test)]
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
        if d.len() <= 1 {
            return;
        }
        let k = split(d.len());
        if m < k {
            path(m, &d[..k], out);
            out.push(root(&d[k..]));
        } else {
            path(m - k, &d[k..], out);
            out.push(root(&d[..k]));
        }
    }
    if index >= leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    Some(out)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC
/// 6962 §2.1.1 PATH), from `sub_root(start, len)`, the tree head of the
/// leaves `start..start + len`. Every range it asks for is aligned: either
/// a perfect subtree (`len` a power of two, `start` a multiple of it) or the
/// right part of a tree, which splits into perfect subtrees the same way.
/// `None` when the index is out of range.
pub fn inclusion_path<E>(
    index: u64,
    size: u64,
    sub_root: &mut dyn FnMut(u64, u64) -> Result<Hash, E>,
) -> Result<Option<Vec<Hash>>, E> {
    if index >= size {
        return Ok(None);
    }
    let mut out = Vec::new();
    let (mut m, mut start, mut len) = (index, 0u64, size);
    // The path from the leaf up: collected top-down, then reversed.
    while len > 1 {
        let k = split_u64(len);
        if m < k {
            out.push(sub_root(start + k, len - k)?);
            len = k;
        } else {
            out.push(sub_root(start, k)?);
            m -= k;
            start += k;
            len -= k;
        }
    }
    out.reverse();
    Ok(Some(out))
}

/// The consistency proof between the trees of the first `old` and the
/// first `new` leaves (RFC 6962 §2.1.2 PROOF), from `sub_root` as in
/// [`inclusion_path`]. `None` unless 1 ≤ old ≤ new.
pub fn consistency_path<E>(
    old: u64,
    new: u64,
    sub_root: &mut dyn FnMut(u64, u64) -> Result<Hash, E>,
) -> Result<Option<Vec<Hash>>, E> {
    if old == 0 || old > new {
        return Ok(None);
    }
    let mut out = Vec::new();
    let (mut m, mut start, mut n, mut whole) = (old, 0u64, new, true);
    while m != n {
        let k = split_u64(n);
        if m <= k {
            out.push(sub_root(start + k, n - k)?);
            n = k;
        } else {
            out.push(sub_root(start, k)?);
            m -= k;
            start += k;
            n -= k;
            whole = false;
        }
    }
    if !whole {
        out.push(sub_root(start, n)?);
    }
    out.reverse();
    Ok(Some(out))
}

/// The consistency proof between the tree of the first `old` leaves and the
/// tree of all `leaves` (RFC 6962 §2.1.2), the plain recursive way: the
/// reference for [`consistency_path`]. `None` unless 1 ≤ old ≤ len.
#[cfg(test)]
pub fn consistency_proof(leaves: &[Hash], old: usize) -> Option<Vec<Hash>> {
    fn subproof(m: usize, d: &[Hash], whole: bool, out: &mut Vec<Hash>) {
        let n = d.len();
        if m == n {
            if !whole {
                out.push(root(d));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            subproof(m, &d[..k], whole, out);
            out.push(root(&d[k..]));
        } else {
            subproof(m - k, &d[k..], false, out);
            out.push(root(&d[..k]));
        }
    }
    if old == 0 || old > leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    subproof(old, leaves, true, &mut out);
    Some(out)
}

/// The largest power of two strictly less than `n` (n ≥ 2).
pub fn split_u64(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The roots of the perfect subtrees that make up a log, largest first:
/// enough to append and to compute the tree head without the leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash) of each perfect subtree, heights strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(height, hash)) = self.nodes.last() {
            if height != node.0 {
                break;
            }
            self.nodes.pop();
            node = (height + 1, node_hash(&hash, &node.1));
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The tree head (RFC 6962 MTH) of the log so far.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = nodes.next() else {
            return Sha256::digest(b"").into();
        };
        for (_, hash) in nodes {
            acc = node_hash(hash, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Vectors computed by `rfc6962_vectors.py`, an independent Python
    /// implementation, over Certificate Transparency's reference leaves.
    const VECTORS: &str = include_str!("rfc6962_vectors.json");

    fn hashes(v: &serde_json::Value) -> Vec<Hash> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h.as_str().unwrap(), &mut out).unwrap();
                out
            })
            .collect()
    }

    #[test]
    fn known_answer_vectors() {
        let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let leaves: Vec<Hash> = LEAVES.iter().map(|l| leaf_hash(l)).collect();
        let mut count = 0;
        let mut frontier = Frontier::new();
        for n in 1..=8 {
            frontier.push(leaves[n - 1]);
            let want = v["roots"][n.to_string()].as_str().unwrap();
            assert_eq!(hex::encode(root(&leaves[..n])), want, "root of {n}");
            assert_eq!(hex::encode(frontier.root()), want, "frontier root of {n}");
            count += 1;
        }
        // Certificate Transparency's published 8-leaf root.
        assert_eq!(
            hex::encode(root(&leaves)),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        for case in v["inclusion"].as_array().unwrap() {
            let (i, n) = (
                case["index"].as_u64().unwrap() as usize,
                case["size"].as_u64().unwrap() as usize,
            );
            assert_eq!(
                inclusion_proof(&leaves[..n], i).unwrap(),
                hashes(&case["path"]),
                "inclusion {i} in {n}"
            );
            count += 1;
        }
        for case in v["consistency"].as_array().unwrap() {
            let (m, n) = (
                case["old"].as_u64().unwrap() as usize,
                case["new"].as_u64().unwrap() as usize,
            );
            assert_eq!(
                consistency_proof(&leaves[..n], m).unwrap(),
                hashes(&case["proof"]),
                "consistency {m} to {n}"
            );
            count += 1;
        }
        println!(
            "RFC 6962 known-answer vectors: {count} run (8 roots, 36 inclusion, 36 consistency)"
        );
        assert_eq!(count, 80);
        assert_eq!(root(&[]), <[u8; 32]>::from(Sha256::digest(b"")));
        assert!(inclusion_proof(&leaves, 8).is_none());
        assert!(consistency_proof(&leaves, 0).is_none());
        assert!(consistency_proof(&leaves, 9).is_none());
    }

    #[test]
    fn frontier_matches_the_full_tree_for_many_sizes() {
        let mut f = Frontier::new();
        let mut all = Vec::new();
        for i in 0u32..300 {
            let h = leaf_hash(&i.to_be_bytes());
            all.push(h);
            f.push(h);
            assert_eq!(f.root(), root(&all), "size {}", i + 1);
        }
        assert_eq!(f.size(), 300);
    }

    /// The paths from a range-root oracle equal the recursive references,
    /// for every index and old size of many trees.
    #[test]
    fn paths_from_range_roots_equal_the_reference_proofs() {
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 31, 64, 65, 100, 257] {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let mut asked = Vec::new();
            let mut oracle = |start: u64, len: u64| -> Result<Hash, ()> {
                asked.push((start, len));
                Ok(root(&leaves[start as usize..(start + len) as usize]))
            };
            for i in 0..n {
                assert_eq!(
                    inclusion_path(i as u64, n as u64, &mut oracle).unwrap(),
                    inclusion_proof(&leaves, i),
                    "inclusion {i} in {n}"
                );
            }
            for m in 1..=n {
                assert_eq!(
                    consistency_path(m as u64, n as u64, &mut oracle).unwrap(),
                    consistency_proof(&leaves, m),
                    "consistency {m} to {n}"
                );
            }
            assert_eq!(inclusion_path(n as u64, n as u64, &mut oracle), Ok(None));
            assert_eq!(consistency_path(0, n as u64, &mut oracle), Ok(None));
            assert_eq!(
                consistency_path(n as u64 + 1, n as u64, &mut oracle),
                Ok(None)
            );
            // Every range asked for splits into aligned perfect subtrees
            // (what the tiles serve).
            for (start, len) in asked {
                let top = split_u64(len + 1);
                assert_eq!(start % top, 0, "range {start}+{len} in {n}");
            }
        }
        for n in 2..5000u64 {
            let k = split_u64(n);
            assert!(k.is_power_of_two() && k < n && 2 * k >= n, "{n}");
        }
    }

    #[test]
    fn an_oracle_error_is_returned() {
        let mut failing = |_: u64, _: u64| -> Result<Hash, &str> { Err("tile missing") };
        assert_eq!(inclusion_path(3, 8, &mut failing), Err("tile missing"));
        assert_eq!(consistency_path(3, 8, &mut failing), Err("tile missing"));
        // A one-leaf tree and equal sizes need no range at all.
        assert_eq!(inclusion_path(0, 1, &mut failing), Ok(Some(vec![])));
        assert_eq!(consistency_path(8, 8, &mut failing), Ok(Some(vec![])));
    }
}
