//! RFC 6962 Merkle tree hashing (SHA-256): leaf and node hashes, the root
//! of a list of leaves, an incremental root builder, and the verification
//! of inclusion and consistency proofs (the algorithms of RFC 9162
//! §2.1.3.2 and §2.1.4.2).

use sha2::{Digest as _, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

/// The byte in front of a leaf's bytes in its hash (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;

/// The byte in front of two child hashes in a node's hash.
pub const NODE_PREFIX: u8 = 0x01;

/// The leaf hash of `leaf`: SHA-256(0x00 ‖ leaf).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of no bytes (`e3b0c442…b855`).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The Merkle tree hash (RFC 6962 §2.1) of leaves given by their leaf
/// hashes: for n > 1, the node hash of the roots of the first k leaves and
/// of the rest, k the largest power of two smaller than n.
pub fn root_from_leaf_hashes(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let k = split(leaf_hashes.len() as u64) as usize;
            node_hash(
                &root_from_leaf_hashes(&leaf_hashes[..k]),
                &root_from_leaf_hashes(&leaf_hashes[k..]),
            )
        }
    }
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of a growing tree, one leaf at a time, in O(log n) memory: the
/// roots of its perfect subtrees, largest first (a "compact range").
#[derive(Debug, Clone, Default)]
pub struct RootBuilder {
    size: u64,
    /// (leaf count, root) of each perfect subtree, strictly decreasing
    /// counts: the binary digits of `size`.
    subtrees: Vec<(u64, Hash)>,
}

impl RootBuilder {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf, given by its leaf hash.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut count = 1u64;
        let mut hash = leaf_hash;
        while let Some(&(last_count, last)) = self.subtrees.last() {
            if last_count != count {
                break;
            }
            self.subtrees.pop();
            hash = node_hash(&last, &hash);
            count *= 2;
        }
        self.subtrees.push((count, hash));
        self.size += 1;
    }

    /// The number of leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the leaves so far (RFC 6962 MTH): the perfect subtrees
    /// folded from the right.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(&(_, mut root)) = subtrees.next() else {
            return empty_root();
        };
        for (_, left) in subtrees {
            root = node_hash(left, &root);
        }
        root
    }
}

/// Why a proof does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// An inclusion proof's leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof's first size is larger than the second.
    #[error("tree size {first} is larger than tree size {second}")]
    SizesOutOfOrder {
        /// The earlier tree's size.
        first: u64,
        /// The later tree's size.
        second: u64,
    },
    /// The proof has more or fewer hashes than the sizes call for.
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    /// The hashes rebuild another root than the one given.
    #[error("the proof does not lead to the given root")]
    RootMismatch,
}

/// Verifies that the leaf with `leaf_hash` is leaf `index` of the tree of
/// `size` leaves whose root is `root`, with its inclusion proof (the
/// sibling hashes from the leaf up), by RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `first` leaves with root `first_root` is a
/// prefix of the tree of `second` leaves with root `second_root`, with the
/// consistency proof between them, by RFC 9162 §2.1.4.2.
///
/// Equal sizes need an empty proof and equal roots; the empty tree (size
/// 0, root SHA-256 of nothing) is a prefix of every tree, with an empty
/// proof.
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if *first_root == empty_root() {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }

    // A first tree of a power-of-two size is a whole subtree of the second:
    // its root is where the path starts.
    let (start, rest) = if first.is_power_of_two() {
        (first_root, proof)
    } else {
        (&proof[0], &proof[1..])
    };
    let mut f_n = first - 1;
    let mut s_n = second - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut f_r = *start;
    let mut s_r = *start;
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if f_r != *first_root || s_r != *second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;

    /// The vectors of `tests-data/rfc6962_vectors.py`, an independent
    /// implementation in Python.
    const VECTORS: &str = include_str!("../../tests-data/rfc6962_vectors.json");

    fn hash(value: &Json) -> Hash {
        let text = value.as_str().expect("a hex string");
        hex::decode(text)
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    }

    fn hashes(value: &Json) -> Vec<Hash> {
        value
            .as_array()
            .expect("an array")
            .iter()
            .map(hash)
            .collect()
    }

    fn number(value: &Json) -> u64 {
        value.as_u64().expect("a number")
    }

    fn flip(h: &Hash, byte: &Json) -> Hash {
        let mut h = *h;
        h[number(byte) as usize] ^= 0x01;
        h
    }

    fn vectors() -> Json {
        serde_json::from_str(VECTORS).expect("the vectors parse")
    }

    /// The Certificate Transparency reference roots of the eight leaves.
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_certificate_transparency_and_python() {
        let vectors = vectors();
        let leaves: Vec<Vec<u8>> = vectors["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| hex::decode(l.as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(leaves.len(), 8);
        let leaf_hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let python_roots = vectors["roots"].as_array().unwrap();
        assert_eq!(python_roots.len(), 9);
        let mut builder = RootBuilder::new();
        let mut run = 0;
        for size in 0..=8usize {
            let root = root_from_leaf_hashes(&leaf_hashes[..size]);
            assert_eq!(hex::encode(root), CT_ROOTS[size], "size {size}");
            assert_eq!(number(&python_roots[size]["size"]), size as u64);
            assert_eq!(hash(&python_roots[size]["root"]), root, "size {size}");
            assert_eq!(builder.size(), size as u64);
            assert_eq!(builder.root(), root, "builder, size {size}");
            if let Some(leaf) = leaf_hashes.get(size) {
                builder.push(*leaf);
            }
            run += 1;
        }
        println!("rfc6962 roots: {run} prefix roots match the CT reference and Python");
    }

    #[test]
    fn python_inclusion_proofs() {
        let vectors = vectors();
        let (mut good, mut refused, mut accepted) = (0, 0, 0);
        for v in vectors["inclusion"].as_array().unwrap() {
            let index = number(&v["index"]);
            let size = number(&v["size"]);
            let leaf = hash(&v["leaf_hash"]);
            let root = hash(&v["root"]);
            let proof = hashes(&v["proof"]);
            let at = format!("inclusion of {index} in {size}");
            assert_eq!(
                verify_inclusion(&leaf, index, size, &proof, &root),
                Ok(()),
                "{at}"
            );
            good += 1;
            for t in v["tampered"].as_array().unwrap() {
                let (kind, arg, valid) = (t[0].as_str().unwrap(), &t[1], t[2].as_bool().unwrap());
                let result = match kind {
                    "flip" => {
                        let element = number(&arg[0]) as usize;
                        let mut bad = proof.clone();
                        bad[element] = flip(&bad[element], &arg[1]);
                        verify_inclusion(&leaf, index, size, &bad, &root)
                    }
                    "flip_leaf" => verify_inclusion(&flip(&leaf, arg), index, size, &proof, &root),
                    "flip_root" => verify_inclusion(&leaf, index, size, &proof, &flip(&root, arg)),
                    "index" => verify_inclusion(&leaf, number(arg), size, &proof, &root),
                    "size" => verify_inclusion(&leaf, index, number(arg), &proof, &root),
                    "drop_last" => {
                        verify_inclusion(&leaf, index, size, &proof[..proof.len() - 1], &root)
                    }
                    "append" => {
                        let longer = [proof.as_slice(), &[root]].concat();
                        verify_inclusion(&leaf, index, size, &longer, &root)
                    }
                    other => panic!("unknown tamper {other}"),
                };
                assert_eq!(result.is_ok(), valid, "{at}, {t}: {result:?}");
                if valid {
                    // Only a wrong size can share a proof's shape.
                    assert_eq!(kind, "size", "{at}, {t}");
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert_eq!(good, 36);
        println!(
            "rfc6962 inclusion: {good} Python proofs verify; {} tampered vectors agree with \
             Python ({refused} refused, {accepted} wrong sizes of the same proof shape accepted)",
            refused + accepted
        );
    }

    #[test]
    fn python_consistency_proofs() {
        let vectors = vectors();
        let (mut good, mut refused, mut accepted) = (0, 0, 0);
        for v in vectors["consistency"].as_array().unwrap() {
            let first = number(&v["first"]);
            let second = number(&v["second"]);
            let r1 = hash(&v["first_root"]);
            let r2 = hash(&v["second_root"]);
            let proof = hashes(&v["proof"]);
            let at = format!("consistency of {first} and {second}");
            assert_eq!(
                verify_consistency(first, second, &proof, &r1, &r2),
                Ok(()),
                "{at}"
            );
            good += 1;
            for t in v["tampered"].as_array().unwrap() {
                let (kind, arg, valid) = (t[0].as_str().unwrap(), &t[1], t[2].as_bool().unwrap());
                let result = match kind {
                    "flip" => {
                        let element = number(&arg[0]) as usize;
                        let mut bad = proof.clone();
                        bad[element] = flip(&bad[element], &arg[1]);
                        verify_consistency(first, second, &bad, &r1, &r2)
                    }
                    "flip_first_root" => {
                        verify_consistency(first, second, &proof, &flip(&r1, arg), &r2)
                    }
                    "flip_second_root" => {
                        verify_consistency(first, second, &proof, &r1, &flip(&r2, arg))
                    }
                    "first" => verify_consistency(number(arg), second, &proof, &r1, &r2),
                    "size" => verify_consistency(first, number(arg), &proof, &r1, &r2),
                    "drop_last" => {
                        verify_consistency(first, second, &proof[..proof.len() - 1], &r1, &r2)
                    }
                    "append" => {
                        let longer = [proof.as_slice(), &[r2]].concat();
                        verify_consistency(first, second, &longer, &r1, &r2)
                    }
                    other => panic!("unknown tamper {other}"),
                };
                assert_eq!(result.is_ok(), valid, "{at}, {t}: {result:?}");
                if valid {
                    assert!(kind == "size" || kind == "first", "{at}, {t}");
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert_eq!(good, 36);
        println!(
            "rfc6962 consistency: {good} Python proofs verify; {} tampered vectors agree with \
             Python ({refused} refused, {accepted} wrong sizes of the same proof shape accepted)",
            refused + accepted
        );
    }

    #[test]
    fn edge_cases() {
        let a = leaf_hash(b"a");
        let empty = empty_root();
        assert_eq!(
            hex::encode(empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            verify_inclusion(&a, 0, 0, &[], &empty),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(verify_inclusion(&a, 0, 1, &[], &a), Ok(()));
        assert_eq!(
            verify_inclusion(&a, u64::MAX, u64::MAX, &[], &a),
            Err(ProofError::IndexOutOfRange {
                index: u64::MAX,
                size: u64::MAX
            })
        );
        // Huge sizes do not overflow: the proof is just too short.
        assert_eq!(
            verify_inclusion(&a, 0, u64::MAX, &[a; 3], &a),
            Err(ProofError::WrongLength)
        );
        assert_eq!(
            verify_consistency(u64::MAX - 1, u64::MAX, &[a; 2], &a, &a),
            Err(ProofError::WrongLength)
        );
        // The empty tree is a prefix of every tree, with an empty proof.
        assert_eq!(verify_consistency(0, 5, &[], &empty, &a), Ok(()));
        assert_eq!(
            verify_consistency(0, 5, &[], &a, &a),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_consistency(0, 5, &[a], &empty, &a),
            Err(ProofError::WrongLength)
        );
        assert_eq!(verify_consistency(0, 0, &[], &empty, &empty), Ok(()));
        assert_eq!(
            verify_consistency(3, 2, &[], &a, &a),
            Err(ProofError::SizesOutOfOrder {
                first: 3,
                second: 2
            })
        );
        assert_eq!(
            verify_consistency(2, 3, &[], &a, &a),
            Err(ProofError::WrongLength)
        );
        assert_eq!(
            verify_consistency(3, 3, &[], &a, &empty),
            Err(ProofError::RootMismatch)
        );
    }

    #[test]
    fn the_builder_agrees_with_the_recursive_definition() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut builder = RootBuilder::new();
        for (n, leaf) in leaves.iter().enumerate() {
            assert_eq!(builder.root(), root_from_leaf_hashes(&leaves[..n]), "{n}");
            builder.push(*leaf);
        }
        assert_eq!(builder.root(), root_from_leaf_hashes(&leaves));
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(u64::MAX), 1 << 63);
    }
}
