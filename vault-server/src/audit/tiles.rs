//! The Merkle tree on disk, as tiles (the C2SP tlog-tiles layout), so that
//! the log's memory does not grow with its size.
//!
//! A tile of level L holds [`WIDTH`] (256) consecutive hashes of the tree's
//! level 8·L: level 0 the leaf hashes, level 1 the roots of 256-leaf
//! subtrees, and so on. Tile `N` of level L holds the hashes `256·N ..
//! 256·N + 255` of that level. Full tiles are stored, in the batch that
//! completes them, as the raw concatenation of their hashes (the tile body
//! of tlog-tiles); the partial tile of each level, the tree's right edge,
//! stays in memory ([`Edge`]: under 8 KiB a level, five levels for 2^40
//! events). Any perfect subtree's root is one stored or edge hash, hashed
//! up at most seven times from 128 hashes of one tile ([`Reader::node`]).

use std::collections::HashMap;

use super::merkle::{node_hash, split_u64, Hash};
use crate::{Error, Result};

/// Levels of the tree in one tile.
pub const HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const WIDTH: usize = 1 << HEIGHT;
/// Bytes of a stored (full) tile.
pub const TILE_BYTES: usize = WIDTH * 32;

/// A tile completed by an append, to be stored beside the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullTile {
    /// Its level (the tree's level 8·`level`).
    pub level: u8,
    /// Its number in the level.
    pub index: u64,
    /// Its [`WIDTH`] hashes.
    pub hashes: Vec<Hash>,
}

impl FullTile {
    /// The stored bytes: the hashes, concatenated.
    pub fn encode(&self) -> Vec<u8> {
        self.hashes.concat()
    }
}

/// Reads a stored tile: exactly [`WIDTH`] hashes, or an integrity failure.
pub fn decode(bytes: &[u8]) -> Result<Vec<Hash>> {
    if bytes.len() != TILE_BYTES {
        return Err(Error::Integrity);
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| <Hash>::try_from(c).unwrap_or([0; 32]))
        .collect())
}

/// The root of a perfect subtree given its bottom hashes (a power of two
/// of them).
fn perfect_root(hashes: &[Hash]) -> Hash {
    let mut level = hashes.to_vec();
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level.first().copied().unwrap_or([0; 32])
}

/// The right edge of the tree: the partial tile of each level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edge {
    size: u64,
    /// `levels[L]`: the hashes of level 8·L past its last full tile
    /// (fewer than [`WIDTH`]).
    levels: Vec<Vec<Hash>>,
}

impl Edge {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether appending `n` leaves completes a tile (then the tiles come
    /// out of [`Edge::push`]).
    pub fn completes_a_tile(&self, n: u64) -> bool {
        (self.size % WIDTH as u64) + n >= WIDTH as u64
    }

    /// Appends a leaf hash; the tiles it completes go to `full`.
    pub fn push(&mut self, leaf: Hash, full: &mut Vec<FullTile>) {
        self.size += 1;
        let mut hash = leaf;
        for level in 0u8.. {
            let l = usize::from(level);
            if self.levels.len() <= l {
                self.levels.push(Vec::with_capacity(WIDTH));
            }
            self.levels[l].push(hash);
            if self.levels[l].len() < WIDTH {
                return;
            }
            let hashes = std::mem::replace(&mut self.levels[l], Vec::with_capacity(WIDTH));
            hash = perfect_root(&hashes);
            full.push(FullTile {
                level,
                index: (self.size >> (HEIGHT * (u32::from(level) + 1))) - 1,
                hashes,
            });
        }
    }

    /// How many full tiles level `level` has.
    fn full_tiles(&self, level: u32) -> u64 {
        self.size
            .checked_shr(HEIGHT * (level + 1))
            .unwrap_or_default()
    }
}

/// Reads a stored tile by level and number (`None`: not stored).
pub trait Fetch: FnMut(u8, u64) -> Result<Option<Vec<u8>>> {}

impl<F: FnMut(u8, u64) -> Result<Option<Vec<u8>>>> Fetch for F {}

/// Most tiles a [`Reader`] keeps between lookups (8 KiB each).
const CACHED_TILES: usize = 64;
/// Most inner nodes it remembers.
const CACHED_NODES: usize = 16 * 1024;

/// Reads subtree roots of a tree from its stored tiles and a copy of its
/// right edge, remembering a bounded number of tiles and nodes, so that a
/// page of proofs reads each tile about once.
pub struct Reader<F> {
    edge: Edge,
    fetch: F,
    tiles: HashMap<(u32, u64), Vec<Hash>>,
    nodes: HashMap<(u32, u64), Hash>,
}

impl<F> std::fmt::Debug for Reader<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("size", &self.edge.size)
            .field("cached_tiles", &self.tiles.len())
            .finish_non_exhaustive()
    }
}

impl<F: Fetch> Reader<F> {
    /// A reader of the tree whose right edge is `edge`; `fetch(level,
    /// index)` reads a stored tile.
    pub fn new(edge: Edge, fetch: F) -> Self {
        Reader {
            edge,
            fetch,
            tiles: HashMap::new(),
            nodes: HashMap::new(),
        }
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.edge.size
    }

    /// The root of the perfect subtree of height `height` (2^height leaves)
    /// numbered `index` in its level. An integrity failure if a tile it
    /// needs is missing or damaged.
    pub fn node(&mut self, height: u32, index: u64) -> Result<Hash> {
        let end = index
            .checked_add(1)
            .and_then(|n| n.checked_shl(height))
            .filter(|&end| height < 64 && end <= self.edge.size);
        if end.is_none() {
            return Err(Error::InvalidArgument(format!(
                "no subtree {index} of height {height} in a tree of {} leaves",
                self.edge.size
            )));
        }
        if height.is_multiple_of(HEIGHT) {
            return self.stored(height / HEIGHT, index);
        }
        if let Some(h) = self.nodes.get(&(height, index)) {
            return Ok(*h);
        }
        let h = node_hash(
            &self.node(height - 1, 2 * index)?,
            &self.node(height - 1, 2 * index + 1)?,
        );
        if self.nodes.len() >= CACHED_NODES {
            self.nodes.clear();
        }
        self.nodes.insert((height, index), h);
        Ok(h)
    }

    /// Hash `index` of tile level `level`: in a stored tile or the edge.
    fn stored(&mut self, level: u32, index: u64) -> Result<Hash> {
        let tile = index >> HEIGHT;
        let at = (index % WIDTH as u64) as usize;
        if tile < self.edge.full_tiles(level) {
            if !self.tiles.contains_key(&(level, tile)) {
                let l = u8::try_from(level).map_err(|_| Error::Integrity)?;
                let bytes = (self.fetch)(l, tile)?.ok_or_else(|| {
                    tracing::error!(level, tile, "a Merkle tile of the audit log is missing");
                    Error::Integrity
                })?;
                if self.tiles.len() >= CACHED_TILES {
                    self.tiles.clear();
                }
                self.tiles.insert((level, tile), decode(&bytes)?);
            }
            return self
                .tiles
                .get(&(level, tile))
                .and_then(|t| t.get(at))
                .copied()
                .ok_or(Error::Integrity);
        }
        self.edge
            .levels
            .get(level as usize)
            .and_then(|l| l.get(at))
            .copied()
            .ok_or(Error::Integrity)
    }

    /// The tree head (RFC 6962 MTH) of the leaves `start..start + len`, a
    /// range whose perfect parts are aligned (what proofs ask for).
    pub fn range_root(&mut self, start: u64, len: u64) -> Result<Hash> {
        if len == 0 {
            return Err(Error::InvalidArgument("an empty range has no root".into()));
        }
        if len.is_power_of_two() && start.is_multiple_of(len) {
            return self.node(len.trailing_zeros(), start / len);
        }
        let k = split_u64(len);
        let left = self.range_root(start, k)?;
        let right = self.range_root(start + k, len - k)?;
        Ok(node_hash(&left, &right))
    }
}

#[cfg(test)]
mod tests {
    use super::super::merkle::{self, leaf_hash, root};
    use super::*;

    type Stored = HashMap<(u8, u64), Vec<u8>>;

    /// A tree of `n` leaves: its edge and its stored tiles.
    fn tree(n: u64) -> (Vec<Hash>, Edge, Stored) {
        let mut edge = Edge::new();
        let mut stored = HashMap::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let h = leaf_hash(&i.to_be_bytes());
            leaves.push(h);
            let mut full = Vec::new();
            let before = edge.completes_a_tile(1);
            edge.push(h, &mut full);
            assert_eq!(before, !full.is_empty(), "leaf {i}");
            for t in full {
                assert!(stored.insert((t.level, t.index), t.encode()).is_none());
            }
        }
        (leaves, edge, stored)
    }

    fn reader<'a>(edge: &Edge, stored: &'a Stored) -> Reader<impl Fetch + 'a> {
        Reader::new(edge.clone(), move |l, i| Ok(stored.get(&(l, i)).cloned()))
    }

    #[test]
    fn tiles_serve_every_proof_of_the_full_tree() {
        // Sizes around one and two levels of full tiles.
        for n in [1u64, 2, 255, 256, 257, 511, 513, 1000, 65_537] {
            let (leaves, edge, stored) = tree(n);
            assert_eq!(edge.size(), n);
            let level0 = n / 256;
            let level1 = n / 65_536;
            assert_eq!(stored.len() as u64, level0 + level1, "tiles of {n}");
            assert!(edge.levels.iter().all(|l| l.len() < WIDTH));
            let mut r = reader(&edge, &stored);
            assert_eq!(r.range_root(0, n).unwrap(), root(&leaves), "root of {n}");
            // Proofs at the current size and at older sizes: the same as
            // from the leaves. (Each reference proof costs a pass over the
            // leaves: few of them in the large tree.)
            let sizes = if n > 1000 {
                vec![n, 65_536]
            } else {
                vec![n, n / 2 + 1, (n / 256) * 256 + 1]
            };
            for size in sizes.into_iter().map(|s| s.min(n)) {
                let upto = &leaves[..size as usize];
                let picks: Vec<u64> = if n > 1000 {
                    vec![0, 1, 255, 256, 257, 40_000, size - 1, size]
                } else {
                    (0..=size).step_by(if n > 300 { 13 } else { 1 }).collect()
                };
                let mut oracle = |s: u64, l: u64| r.range_root(s, l);
                for &i in picks.iter().filter(|&&i| i < size) {
                    assert_eq!(
                        merkle::inclusion_path(i, size, &mut oracle).unwrap(),
                        merkle::inclusion_proof(upto, i as usize),
                        "inclusion {i} in {size} of {n}"
                    );
                }
                for &old in picks.iter().filter(|&&i| (1..=size).contains(&i)) {
                    assert_eq!(
                        merkle::consistency_path(old, size, &mut oracle).unwrap(),
                        merkle::consistency_proof(upto, old as usize),
                        "consistency {old} to {size} of {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_missing_or_damaged_tile_is_an_integrity_failure_not_a_panic() {
        let (_, edge, mut stored) = tree(600);
        assert!(matches!(
            reader(&edge, &stored).node(20, 0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            reader(&edge, &stored).node(3, u64::MAX),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            reader(&edge, &stored).node(70, 0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            reader(&edge, &stored).range_root(0, 0),
            Err(Error::InvalidArgument(_))
        ));
        // The edge alone serves what lies past the last full tile.
        stored.clear();
        assert!(reader(&edge, &stored).node(3, 70).is_ok());
        assert!(matches!(
            reader(&edge, &stored).node(0, 3),
            Err(Error::Integrity)
        ));
        for bad in [
            vec![],
            vec![0u8; TILE_BYTES - 1],
            vec![0u8; TILE_BYTES + 32],
        ] {
            stored.insert((0, 0), bad);
            assert!(matches!(
                reader(&edge, &stored).node(1, 0),
                Err(Error::Integrity)
            ));
        }
        let failing =
            |_: u8, _: u64| -> Result<Option<Vec<u8>>> { Err(Error::Storage("io".into())) };
        assert!(matches!(
            Reader::new(edge.clone(), failing).node(1, 0),
            Err(Error::Storage(_))
        ));
    }

    #[test]
    fn the_edge_stays_small() {
        let (_, edge, _) = tree(70_000);
        let hashes: usize = edge.levels.iter().map(Vec::len).sum();
        assert!(hashes < 3 * WIDTH, "{hashes}");
        assert_eq!(edge.levels.len(), 3);
    }
}
