//! The RocksDB store.

use std::path::{Path, PathBuf};

use rocksdb::{
    BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions, DB,
};

use super::{Op, Store, StoreMemory, Table, WriteSet};
use crate::{Error, Result};

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Sync the WAL before a write is acknowledged. Off only for benchmarks
    /// that measure CPU overhead; an unsynced write can be lost on power loss.
    pub sync_writes: bool,
    /// Bytes of the block cache all tables share (data blocks, and every
    /// file's index and filter blocks).
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_writes: true,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }
}

/// RocksDB with one column family per [`Table`].
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    sync_writes: bool,
    /// Held from the check of a write's conditions to its write.
    conditional: std::sync::Mutex<()>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("sync_writes", &self.sync_writes)
            .finish()
    }
}

fn storage_err(e: rocksdb::Error) -> Error {
    classify(e.into_string())
}

/// A full disk is the operator's to fix, and says so (without RocksDB's
/// file paths); any other storage failure stays an internal error whose
/// detail goes to the server's log only.
fn classify(message: String) -> Error {
    use super::STORAGE_FULL;
    if message.contains("No space left on device") || message.contains("Disk quota exceeded") {
        // RocksDB's own words (file, volume) are for the operator's log.
        tracing::warn!(error = %message, "storage full");
        Error::Unavailable(STORAGE_FULL.into())
    } else {
        Error::Storage(message)
    }
}

/// Target size of an SST file.
const SST_FILE_BYTES: u64 = 8 << 20;
/// Memtables of every table together.
const MEMTABLE_BYTES: usize = 128 << 20;
/// Write-ahead log files, together: past this the tables holding the
/// oldest log are flushed.
const WAL_BYTES: u64 = 256 << 20;
/// The block cache all tables share, unless configured. It holds data
/// blocks and also every SST file's index and filter blocks, which RocksDB
/// otherwise keeps outside any bound, growing with the data. (64 MiB held
/// gets at 10^6 records to 0.66 of those at 10^3; 256 MiB, 0.88.)
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 256 << 20;

impl RocksStore {
    /// Opens (creating if missing) the store in `path`.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Values are ciphertext: compression would only cost CPU.
        db_opts.set_compression_type(rocksdb::DBCompressionType::None);
        // Bounds for a process that runs for months: the memtables of all
        // tables together, and the log files (a table written rarely, such
        // as the metadata, would otherwise keep every log file alive until
        // it is flushed: 750 MB of logs at 10^6 records).
        db_opts.set_db_write_buffer_size(MEMTABLE_BYTES);
        db_opts.set_max_total_wal_size(WAL_BYTES);
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let mut tables = rocksdb::BlockBasedOptions::default();
        tables.set_block_cache(&cache);
        tables.set_cache_index_and_filter_blocks(true);
        // The newest files' index and filters stay (every read needs them).
        tables.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Point reads of absent keys (a new record's previous version, an
        // unknown id) mostly skip the files that cannot hold them.
        tables.set_bloom_filter(10.0, false);
        let cfs = Table::ALL.iter().map(|t| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&tables);
            o.set_compression_type(rocksdb::DBCompressionType::None);
            // Smaller files than RocksDB's 64 MiB: compacting one key range
            // after an erasure rewrites the files that overlap it, whole.
            o.set_target_file_size_base(SST_FILE_BYTES);
            ColumnFamilyDescriptor::new(t.name(), o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| {
            Error::Storage(format!(
                "cannot open the data folder {}: {}",
                path.display(),
                e.into_string()
            ))
        })?;
        if !options.sync_writes {
            tracing::warn!(
                "writes are acknowledged before the WAL is synced: a power loss can lose them"
            );
        }
        Ok(RocksStore {
            db,
            path: path.to_owned(),
            sync_writes: options.sync_writes,
            conditional: std::sync::Mutex::new(()),
        })
    }

    /// Bytes a table holds: its live SST files and its memtables (for
    /// sizing: where a data folder's bytes go).
    pub fn table_bytes(&self, table: Table) -> Result<u64> {
        let cf = self.cf(table)?;
        let mut total = 0;
        for property in [
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
        ] {
            total += self
                .db
                .property_int_value_cf(cf, property)
                .map_err(storage_err)?
                .unwrap_or(0);
        }
        Ok(total)
    }

    fn cf(&self, table: Table) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(table.name())
            .ok_or_else(|| Error::Storage(format!("column family {} missing", table.name())))
    }
}

impl Store for RocksStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(table)?, key).map_err(storage_err)
    }

    fn get_uncached(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.fill_cache(false);
        self.db
            .get_cf_opt(self.cf(table)?, key, &opts)
            .map_err(storage_err)
    }

    fn multi_get(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(table)?;
        self.db
            .multi_get_cf(keys.iter().map(|k| (cf, k.as_slice())))
            .into_iter()
            .map(|r| r.map_err(storage_err))
            .collect()
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(table)?,
            IteratorMode::From(prefix, Direction::Forward),
        ) {
            let (k, v) = item.map_err(storage_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in self
            .db
            .iterator_cf(
                self.cf(table)?,
                IteratorMode::From(start, Direction::Forward),
            )
            .take(limit)
        {
            let (k, v) = item.map_err(storage_err)?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn visit(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        // A full scan: read ahead, and keep the rows out of the block cache
        // that serves requests.
        let mut opts = rocksdb::ReadOptions::default();
        opts.fill_cache(false);
        opts.set_readahead_size(2 << 20);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(table)?, opts);
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            visit(k, v);
            it.next();
        }
        it.status().map_err(storage_err)
    }

    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let cf = self.cf(table)?;
        // Seek to the last key <= prefix ‖ 0xFF…; keys here are short, so
        // 256 bytes of 0xFF bound every key with this prefix.
        let mut upper = prefix.to_vec();
        upper.extend_from_slice(&[0xFF; 256]);
        let mut it = self
            .db
            .iterator_cf(cf, IteratorMode::From(&upper, Direction::Reverse));
        match it.next() {
            Some(Ok((k, v))) if k.starts_with(prefix) => Ok(Some((k.into_vec(), v.into_vec()))),
            Some(Err(e)) => Err(storage_err(e)),
            _ => Ok(None),
        }
    }

    fn write(&self, set: WriteSet) -> Result<()> {
        let mut batch = WriteBatch::default();
        for op in set.ops() {
            match op {
                Op::Put(t, k, v) => batch.put_cf(self.cf(*t)?, k, v),
                Op::Delete(t, k) => batch.delete_cf(self.cf(*t)?, k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes || set.needs_sync());
        if set.conditions().is_empty() {
            return self.db.write_opt(batch, &wo).map_err(storage_err);
        }
        let _held = self.conditional.lock().unwrap_or_else(|p| p.into_inner());
        for c in set.conditions() {
            if self
                .db
                .get_cf(self.cf(c.table)?, &c.key)
                .map_err(storage_err)?
                != c.value
            {
                return Err(Error::Conflict);
            }
        }
        self.db.write_opt(batch, &wo).map_err(storage_err)
    }

    fn memory(&self) -> Result<StoreMemory> {
        let int = |table: Table, property: &str| -> Result<u64> {
            Ok(self
                .db
                .property_int_value_cf(self.cf(table)?, property)
                .map_err(storage_err)?
                .unwrap_or(0))
        };
        // The block cache is shared: any table's figure is the cache's.
        let mut memory = StoreMemory {
            block_cache_bound: int(Table::Records, "rocksdb.block-cache-capacity")?,
            block_cache: int(Table::Records, "rocksdb.block-cache-usage")?,
            block_cache_pinned: int(Table::Records, "rocksdb.block-cache-pinned-usage")?,
            ..StoreMemory::default()
        };
        for t in Table::ALL {
            memory.memtables += int(t, "rocksdb.cur-size-all-mem-tables")?;
            memory.table_readers += int(t, "rocksdb.estimate-table-readers-mem")?;
        }
        Ok(memory)
    }

    fn compact_range(&self, table: Table, start: &[u8], end: &[u8]) -> Result<()> {
        // Rewrite every level's files over the range, the last level too:
        // that is where tombstones and the values they cover are finally
        // dropped. RocksDB flushes the memtable first when it overlaps the
        // range (and only then).
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(self.cf(table)?, Some(start), Some(end), &opts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_unavailable_and_names_no_path() {
        let e = classify(
            "IO error: No space left on device: While appending to file: \
             /srv/vault/db/000004.log: No space left on device"
                .into(),
        );
        assert!(
            matches!(&e, Error::Unavailable(m) if m == crate::storage::STORAGE_FULL),
            "{e:?}"
        );
        assert!(!e.to_string().contains("/srv"));
        assert!(matches!(
            classify("IO error: Disk quota exceeded: While appending".into()),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            classify("Corruption: bad block".into()),
            Error::Storage(_)
        ));
    }

    #[test]
    fn write_read_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut ws = WriteSet::new();
        ws.put(Table::Records, b"a\0x".to_vec(), b"1".to_vec());
        ws.put(Table::Records, b"a\0y".to_vec(), b"2".to_vec());
        ws.put(Table::Records, b"b\0x".to_vec(), b"3".to_vec());
        ws.put(Table::Meta, b"a\0x".to_vec(), b"meta".to_vec());
        store.write(ws).unwrap();
        assert_eq!(
            store.get(Table::Records, b"a\0x").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(
            store.get(Table::Meta, b"a\0x").unwrap(),
            Some(b"meta".to_vec())
        );
        assert_eq!(store.scan_prefix(Table::Records, b"a\0").unwrap().len(), 2);
        assert_eq!(
            store
                .last_with_prefix(Table::Records, b"a\0")
                .unwrap()
                .unwrap()
                .1,
            b"2".to_vec()
        );
        assert_eq!(store.last_with_prefix(Table::Records, b"c").unwrap(), None);
        let got = store
            .multi_get(Table::Records, &[b"b\0x".to_vec(), b"zz".to_vec()])
            .unwrap();
        assert_eq!(got, vec![Some(b"3".to_vec()), None]);
        let mut ws = WriteSet::new();
        ws.delete(Table::Records, b"a\0x".to_vec());
        store.write(ws).unwrap();
        assert_eq!(store.get(Table::Records, b"a\0x").unwrap(), None);
    }

    /// A deleted value leaves the files once its range is compacted (the
    /// write-ahead log included: the flush retires the log that held it).
    #[test]
    fn a_compacted_range_drops_deleted_values_from_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let canary = b"canary-value-0123456789";
        for round in 0..2 {
            let mut ws = WriteSet::new();
            ws.put(Table::Records, b"k1".to_vec(), canary.to_vec());
            ws.put(Table::Records, b"k2".to_vec(), b"other".to_vec());
            store.write(ws).unwrap();
            if round == 0 {
                // One copy in an SST file, one in the memtable and the log.
                store
                    .db
                    .flush_cf(store.cf(Table::Records).unwrap())
                    .unwrap();
            }
        }
        let mut ws = WriteSet::new();
        ws.delete(Table::Records, b"k1".to_vec());
        store.write(ws).unwrap();
        store.compact_range(Table::Records, b"k1", b"k2").unwrap();
        assert_eq!(
            store.get(Table::Records, b"k2").unwrap(),
            Some(b"other".to_vec())
        );
        for entry in walkdir(dir.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary),
                "{} still holds the deleted value",
                entry.display()
            );
        }
    }

    /// Writes `mib` MiB of 4 KiB values under keys 0, 1, … (big-endian
    /// u32; the value's bytes are its MiB's number) and flushes them to
    /// files.
    fn fill_mib(store: &RocksStore, table: Table, mib: u32) {
        for chunk in 0..mib {
            let mut ws = WriteSet::new();
            for i in 0..256u32 {
                let key = (chunk * 256 + i).to_be_bytes().to_vec();
                ws.put(table, key, vec![chunk as u8; 4096]);
            }
            store.write(ws).unwrap();
        }
        store.compact_range(table, &[], &[0xff; 8]).unwrap();
    }

    #[test]
    fn uncached_reads_leave_the_block_cache_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap();
        fill_mib(&store, Table::Audit, 8);
        let cached = || store.memory().unwrap().block_cache;
        let before = cached();
        for k in 0..8 * 256u32 {
            let v = store.get_uncached(Table::Audit, &k.to_be_bytes()).unwrap();
            assert_eq!(v.unwrap()[0], (k / 256) as u8);
        }
        assert_eq!(store.get_uncached(Table::Audit, b"none").unwrap(), None);
        let after = cached();
        assert!(after < before + (1 << 20), "{before} -> {after}");
        // The same reads through `get` fill it.
        for k in 0..8 * 256u32 {
            assert!(store.get(Table::Audit, &k.to_be_bytes()).unwrap().is_some());
        }
        assert!(cached() > after + (4 << 20), "{after} -> {}", cached());
    }

    #[test]
    fn the_block_cache_stays_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 16 << 20;
        let options = StoreOptions {
            sync_writes: false,
            block_cache_bytes: bound,
        };
        let store = RocksStore::open(dir.path(), &options).unwrap();
        // 32 MiB of values, then read back: the cache fills up to its
        // bound and no further.
        fill_mib(&store, Table::Records, 32);
        for k in 0..32 * 256u32 {
            assert!(store
                .get(Table::Records, &k.to_be_bytes())
                .unwrap()
                .is_some());
        }
        let memory = store.memory().unwrap();
        assert_eq!(memory.block_cache_bound, bound as u64);
        let block_cache = memory.block_cache;
        assert!(block_cache > bound as u64 / 2, "{block_cache}");
        assert!(block_cache <= bound as u64 + (1 << 20), "{block_cache}");
        assert!(memory.block_cache_pinned <= block_cache, "{memory:?}");
        // The stored files have readers; the memtables were flushed.
        assert!(memory.table_readers > 0, "{memory:?}");
        assert!(memory.memtables < 8 << 20, "{memory:?}");
    }

    #[test]
    fn table_bytes_count_each_table_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(
            store.table_bytes(Table::Audit).unwrap(),
            store.table_bytes(Table::Audit).unwrap()
        );
        let before = store.table_bytes(Table::Records).unwrap();
        let mut ws = WriteSet::new();
        for i in 0..1000u32 {
            ws.put(Table::Records, i.to_be_bytes().to_vec(), vec![7; 1000]);
        }
        store.write(ws).unwrap();
        let after = store.table_bytes(Table::Records).unwrap();
        assert!(after >= before + 1_000_000, "{before} -> {after}");
        store
            .compact_range(Table::Records, b"", &[0xFF; 8])
            .unwrap();
        let flushed = store.table_bytes(Table::Records).unwrap();
        assert!(flushed >= 1_000_000, "{flushed}");
        assert!(store.table_bytes(Table::SubjectKeys).unwrap() < 100_000);
    }

    fn walkdir(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
