//! Storage: tables of bytes behind the [`Store`] trait. It sees only
//! ciphertext and non-sensitive metadata; it knows nothing of keys or gRPC.
//! RocksDB ([`RocksStore`]) is the embedded default.

mod codec;
#[cfg(feature = "rocksdb")]
mod postgres;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use codec::{
    bucket_prefix, decode_ids, encode_ids, parse_subject_key_id, record_key, split_record_key,
    subject_key_id, subject_key_prefix, subject_record_key, StoredField, StoredRecord,
    RECORD_TAG_LEN, STORED_RECORD_V2, STORED_RECORD_V3,
};
#[cfg(feature = "rocksdb")]
pub use postgres::{PgOptions, PgStore};
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksStore, StoreOptions, DEFAULT_BLOCK_CACHE_BYTES};

/// What a write on a full disk answers (`UNAVAILABLE`). RocksDB may fail
/// the sync after the append, so the write may yet appear at restart.
pub const STORAGE_FULL: &str = "the vault's storage is full (no space left on device): \
     whether this request was written is known only after a restart; the vault accepts \
     no writes until space is freed and it restarts";

use crate::Result;

/// A kind of stored data; one RocksDB column family each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Facts about the data folder itself (region, keyring id).
    Meta,
    /// Collection schemas (JSON; no personal data).
    Collections,
    /// Records: field ciphertexts keyed by collection and record name.
    Records,
    /// Wrapped subject keys keyed by shred bucket, subject name and version.
    SubjectKeys,
    /// Blind indexes (used by search).
    Index,
    /// The audit log.
    Audit,
    /// Which records belong to a subject: `subject name ‖ record key` → empty.
    SubjectRecords,
    /// Signed erasure receipts by receipt id.
    Receipts,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 8] = [
        Table::Meta,
        Table::Collections,
        Table::Records,
        Table::SubjectKeys,
        Table::Index,
        Table::Audit,
        Table::SubjectRecords,
        Table::Receipts,
    ];

    /// The column family's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Collections => "collections",
            Table::Records => "records",
            Table::SubjectKeys => "subject_keys",
            Table::Index => "index",
            Table::Audit => "audit",
            Table::SubjectRecords => "subject_records",
            Table::Receipts => "receipts",
        }
    }
}

/// One change in a [`WriteSet`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Set a key to a value.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Table, Vec<u8>),
}

/// What a key must hold for a [`WriteSet`] to be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The key's table.
    pub table: Table,
    /// The key.
    pub key: Vec<u8>,
    /// Its value, or `None`: absent.
    pub value: Option<Vec<u8>>,
}

/// The writes of one request, applied atomically.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    ops: Vec<Op>,
    /// Synced even when the store acknowledges writes before the WAL sync.
    sync: bool,
    /// Checked in the write's own transaction: any one unmet, and nothing
    /// is written ([`Error::Conflict`](crate::Error::Conflict)).
    conditions: Vec<Condition>,
    /// The stored keyring must be of each of these generations (a shared
    /// store checks it holding the keyring row shared until the write
    /// commits, so a keyring save waits for the write, and a write after it
    /// fails; sets merged from writes under two generations never pass).
    keyring_generations: Vec<u64>,
    /// Fences this set was made under, with the epoch each had (see
    /// [`Store::hold_fences`]).
    fences: Vec<(u32, u64)>,
    /// Fences whose epoch this set moves on, each with the hold it is
    /// held by ([`FenceHold::holder`]).
    bumps: Vec<(u32, Option<u64>)>,
}

/// How many fences of subjects a shared store keeps: the subjects are
/// spread over them by their storage name, as over the engine's lock
/// stripes (whose number divides this one, so a fence lies within one
/// stripe). One more, [`INDEX_FENCE`], guards the blind-index key.
pub const FENCES: u32 = 4096;

/// The fence of the blind-index key: held by an index-key rotation while it
/// saves the keyring, expected by writes that make blind-index rows.
pub const INDEX_FENCE: u32 = FENCES;

impl WriteSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(table, key, value));
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(Op::Delete(table, key));
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends every change of `other` (after this set's own); the result
    /// must be synced if either had to be.
    pub fn append(&mut self, other: WriteSet) {
        self.ops.extend(other.ops);
        self.sync |= other.sync;
        self.conditions.extend(other.conditions);
        self.keyring_generations.extend(other.keyring_generations);
        self.fences.extend(other.fences);
        self.bumps.extend(other.bumps);
    }

    /// Asks for this set to reach the disk (WAL synced) before the write
    /// returns, even under `danger_unsynced_writes`: for writes that a
    /// file synced afterwards depends on (an erasure's re-wrapped keys,
    /// before the keyring file drops the epoch that opened the old ones).
    pub fn must_sync(&mut self) {
        self.sync = true;
    }

    /// Whether [`WriteSet::must_sync`] was asked.
    pub fn needs_sync(&self) -> bool {
        self.sync
    }

    /// Applies the set only if `key` of `table` holds `value` (`None`:
    /// absent) when it is written. Another server's write of the key in
    /// between fails this one with `Error::Conflict`. A shared store holds
    /// a row that exists as read until the set is written, whoever writes
    /// it; that a row is absent it checks only against other conditional
    /// writes, so every write that may create a key expected absent must
    /// carry a condition.
    pub fn expect(&mut self, table: Table, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.conditions.push(Condition { table, key, value });
    }

    /// The conditions, in order.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Applies the set only if the stored keyring is still of `generation`
    /// (on a shared store; a store of its own has one server, whose
    /// keyring changes are in order already): for writes that wrap keys
    /// under the keyring of that generation.
    pub fn expect_keyring(&mut self, generation: u64) {
        self.keyring_generations.push(generation);
    }

    /// The keyring generations the set was made under.
    pub fn keyring_conditions(&self) -> &[u64] {
        &self.keyring_generations
    }

    /// Applies the set only if no other server holds any of these fences
    /// now and each is still at the epoch given (read before anything the
    /// set depends on was read): a shared store's writers of subjects. A
    /// store of its own has no other server, and ignores them.
    pub fn expect_fences(&mut self, fences: impl IntoIterator<Item = (u32, u64)>) {
        self.fences.extend(fences);
    }

    /// The fences the set was made under, with their epochs.
    pub fn fence_conditions(&self) -> &[(u32, u64)] {
        &self.fences
    }

    /// Moves these fences on to their next epoch when the set is written,
    /// and writes it only if `holder` ([`FenceHold::holder`]) still holds
    /// them: for a set made while holding them ([`Store::hold_fences`]),
    /// so that a set of another server made before it fails.
    pub fn bump_fences(&mut self, fences: impl IntoIterator<Item = u32>, holder: Option<u64>) {
        self.bumps.extend(fences.into_iter().map(|f| (f, holder)));
    }

    /// The fences the set moves on, with their holders.
    pub fn fence_bumps(&self) -> &[(u32, Option<u64>)] {
        &self.bumps
    }
}

/// Fences held by [`Store::hold_fences`], let go when dropped.
pub struct FenceHold {
    release: Option<Box<dyn FnOnce() + Send>>,
    holder: Option<u64>,
}

impl FenceHold {
    /// Nothing held (a store of its own).
    pub fn none() -> Self {
        FenceHold {
            release: None,
            holder: None,
        }
    }

    /// Held by `holder` (what the store knows the hold by) until `release`
    /// runs, when this is dropped.
    pub fn new(holder: u64, release: impl FnOnce() + Send + 'static) -> Self {
        FenceHold {
            release: Some(Box::new(release)),
            holder: Some(holder),
        }
    }

    /// What the store knows the hold by, for [`WriteSet::bump_fences`].
    pub fn holder(&self) -> Option<u64> {
        self.holder
    }
}

impl std::fmt::Debug for FenceHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceHold")
            .field("holder", &self.holder)
            .finish()
    }
}

impl Drop for FenceHold {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Where the sealed keyring is kept: a file (beside RocksDB, or outside
/// the data folder) or a table of its own in PostgreSQL. Never among the
/// [`Table`]s of records.
pub trait KeyringStore: Send + Sync + std::fmt::Debug + 'static {
    /// The sealed keyring, if one was saved.
    fn read(&self) -> Result<Option<Vec<u8>>>;
    /// Replaces it atomically and durably with the keyring of
    /// `generation`. A store shared by several servers refuses it
    /// (`Error::Conflict`) unless the stored keyring is of the generation
    /// before, or there is none: two servers never both change one
    /// generation.
    fn write(&self, sealed: &[u8], generation: u64) -> Result<()>;
    /// The stored keyring's generation, where the store tracks it (a
    /// shared store does, so that servers notice another's change).
    fn generation(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Where it is, for messages (no credentials).
    fn describe(&self) -> String;
}

/// The keyring as a file, replaced by atomic rename.
#[derive(Debug, Clone)]
pub struct KeyringPath(pub std::path::PathBuf);

impl KeyringStore for KeyringPath {
    fn read(&self) -> Result<Option<Vec<u8>>> {
        match std::fs::read(&self.0) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::Error::io(
                format!("reading keyring {}", self.0.display()),
                e,
            )),
        }
    }

    fn write(&self, sealed: &[u8], _generation: u64) -> Result<()> {
        crate::keys::write_secret_file(&self.0, sealed)
            .map_err(|e| crate::Error::io(format!("writing keyring {}", self.0.display()), e))
    }

    fn describe(&self) -> String {
        format!("keyring {}", self.0.display())
    }
}

/// A transactional key-value store of [`Table`]s. Every method blocks: call
/// it off the async reactor.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// One value.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// One value read once, by a scan over the whole store (the audit
    /// log's open): kept out of the cache that serves requests.
    fn get_uncached(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(table, key)
    }
    /// Several values of one table, in the order of `keys`.
    fn multi_get(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// At most `limit` entries with keys `>= start`, in key order.
    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Calls `visit` with every entry of `table`, in key order, without
    /// copying them (counting scans).
    fn visit(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()>;
    /// The entry with the greatest key that starts with `prefix`.
    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Applies every change at once; when it returns `Ok`, the changes are
    /// durable (if the store was opened with synced writes).
    fn write(&self, set: WriteSet) -> Result<()>;
    /// Rewrites the stored files that hold keys in `[start, end)` of
    /// `table` (memory first), so that deleted and overwritten entries of
    /// that range leave the files. A store that cannot rewrite a range
    /// (PostgreSQL) does nothing.
    fn compact_range(&self, table: Table, start: &[u8], end: &[u8]) -> Result<()>;
    /// Whether other vault servers write to this store too (PostgreSQL):
    /// then the audit log's appends are conditional, state kept in memory
    /// is refreshed from the store, and background jobs run only on the
    /// server that leads.
    fn shared(&self) -> bool {
        false
    }
    /// Whether this server leads the background jobs (re-wrap, index
    /// rebuild, retention sweeps, timed checkpoints): always, on a store of
    /// its own; on a shared store, while it holds the store's leader lock,
    /// which another server takes over when this one dies.
    fn lead(&self) -> Result<bool> {
        Ok(true)
    }
    /// Lets go of the leader lock (this server's engine closed: sealed, or
    /// rekeyed elsewhere), so that another server leads.
    fn resign(&self) {}
    /// On a shared store: waits until no other server is appending to the
    /// audit log, and keeps them waiting until [`Store::unlock_appends`],
    /// so that a group is numbered and written without losing the race
    /// (its write stays conditional all the same).
    /// Returns whether it holds the lock (`false`: it waited long enough,
    /// and appends without it).
    fn lock_appends(&self) -> Result<bool> {
        Ok(false)
    }
    /// Ends [`Store::lock_appends`] (when it returned `true`).
    fn unlock_appends(&self) {}
    /// On a shared store, the fences (up to [`INDEX_FENCE`]) as other servers'
    /// subject locks: the epoch of each of `fences` now (0 for one never
    /// moved). A store of its own has none, and answers zeros.
    fn fence_epochs(&self, fences: &[u32]) -> Result<Vec<u64>> {
        Ok(vec![0; fences.len()])
    }
    /// On a shared store: holds `fences` (sorted, distinct) against every
    /// other server until the hold is dropped, waiting (a bounded time:
    /// `Error::Conflict` then) for other holders and for writes in flight
    /// made under them. Taking the hold and letting it go each move the
    /// fences' epochs on, and so does a write of this hold that bumps them
    /// (written only while the hold stands): every set made under their
    /// epochs from before fails, and meanwhile writes of other servers
    /// that expect any of them fail (`Error::Conflict`).
    /// What a server holds exclusively within itself (a subject's rotation
    /// or erasure, a retention purge, a blind-index rebuild batch) it
    /// holds here too. A store of its own holds nothing.
    fn hold_fences(&self, fences: &[u32]) -> Result<FenceHold> {
        let _ = fences;
        Ok(FenceHold::none())
    }
    /// What the store holds in memory now (for sizing); zeros for a store
    /// that does not say.
    fn memory(&self) -> Result<StoreMemory> {
        Ok(StoreMemory::default())
    }
}

/// Memory a store holds in its caches and buffers, in bytes: the figures
/// an operator sizes the process with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// The block cache's configured bound.
    pub block_cache_bound: u64,
    /// What the block cache holds: data blocks, and the index and filter
    /// blocks of every stored file.
    pub block_cache: u64,
    /// Of that, blocks pinned by reads in progress or by the newest files.
    pub block_cache_pinned: u64,
    /// The memtables of every table (bounded together).
    pub memtables: u64,
    /// Readers of the stored files, outside the block cache.
    pub table_readers: u64,
}
