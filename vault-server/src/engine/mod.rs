//! The engine: records in, ciphertext to storage; ciphertext out, plaintext
//! to the caller. It ties the keyring, the key cache, field crypto and the
//! store together. Every method blocks (storage I/O): call it off the async
//! reactor. The exceptions are the `*_async` twins of the record calls
//! (get, put, delete), for the request path: they run their short engine
//! work inline, await the audit commit without holding a thread
//! ([`AuditLog::commit_async`]), and move work that would wait for long to
//! the blocking pool themselves. Each twin shares its sync call's code: a
//! `stage_*` step prepares the batch and event (a `Staged`), then the
//! commit settles it.

mod custody;
mod export;
mod honey;
mod index;
mod reindex;
mod retention;
mod rewrap;
mod schema;
mod search;
mod shared;
mod stripes;
mod value;
mod wraps;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use custody::{Ledger, LedgerEntry, RootKeyInfo, SubjectRotation, MAX_LEDGER_PAGE};
pub use export::{export_statement, ExportChunk, ExportSummary, EXPORT_FORMAT};
pub use honey::MAX_HONEY_RECORDS;
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub(crate) use reindex::reencode_reindex_job_record;
#[cfg(test)]
pub(crate) use reindex::reindex_job_record_seed;
pub use reindex::{ReindexOptions, ReindexProgress};
pub use retention::DEFAULT_SWEEP_INTERVAL;
#[cfg(test)]
pub(crate) use rewrap::job_record_seed;
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub(crate) use rewrap::reencode_job_record;
pub use rewrap::{RewrapOptions, RewrapProgress};
pub use schema::{
    shown, validate_id, validate_name, Collection, DataCategory, FieldSchema, FieldType, Mask,
    Retention, MAX_FIELDS, MAX_ID_BYTES, MAX_RETENTION_SECONDS,
};
pub use shared::SYNC_INTERVAL;
pub use value::{Record, Value};
pub use wraps::{DEFAULT_ROTATE_AFTER_WRAPS, NIST_RANDOM_NONCE_LIMIT};

use zeroize::Zeroizing;

use self::stripes::{SharedGuard, Stripe};
use crate::audit::{AuditLog, Event};
use crate::crypto::{
    labels, open_field, record_tag, seal_field, verify_record_tag, EnvelopeHeader, FieldAad,
    Key256, RecordContext,
};
use crate::keys::{
    unwrap_subject_key, wrap_subject_key, wrapping_version, KeyCache, Keyring, RecordName, Region,
    StorageNames, SubjectKeys, SubjectName,
};
use crate::policy::{Caller, FieldView, Operation, Policy, PolicyHandle, Redaction};
use crate::storage::{
    decode_ids, encode_ids, record_key, subject_key_id, subject_key_prefix, subject_record_key,
    KeyringPath, KeyringStore, Store, StoredField, StoredRecord, Table, WriteSet, RECORD_TAG_LEN,
};
use crate::{Error, Result};

const META_REGION: &[u8] = b"region";
/// `Table::Meta` key: the data folder's format (u32 big-endian).
pub const META_FORMAT: &[u8] = b"format";
/// The data folder format this build writes and reads: 2 (storage names,
/// shred buckets, stored record and wrapped subject key format 2). Format
/// 1 folders (clear ids in keys) have no format row and are refused.
pub const DATA_FOLDER_FORMAT: u32 = 2;
/// A witness's refusal of a checkpoint, as it signed it.
#[derive(Debug, Clone)]
pub struct WitnessRefusal {
    /// When (seconds since the Unix epoch).
    pub time: u64,
    /// Why, one line.
    pub reason: String,
    /// The refused checkpoint's note text.
    pub checkpoint: String,
    /// The witness's Ed25519 signature.
    pub signature: Vec<u8>,
}

/// Seconds since the Unix epoch, by the system clock.
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When the vault signs audit checkpoints (besides whenever an auditor
/// asks for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// After every this many events; 0: not by count.
    pub every_events: u64,
    /// Every this long, if the log grew; zero: not by time.
    pub interval: Duration,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            every_events: 1000,
            interval: Duration::from_secs(60),
        }
    }
}
/// The Meta key under which a data folder records its keyring's id.
pub const META_KEYRING_ID: &[u8] = b"keyring_id";
/// `Table::Meta` key: the highest keyring generation the folder has seen
/// (u64 big-endian); an older keyring is refused at unseal.
pub const META_KEYRING_GENERATION: &[u8] = b"keyring_generation";
/// Stripes of the per-subject locks.
const SUBJECT_STRIPES: usize = 64;

/// How many times a write of records that failed on a condition is tried
/// again on a shared store ([`Engine::retry_conflict`]).
const CONFLICT_RETRIES: u32 = 5;

/// The wait before try `attempt + 1`: 10 ms, doubling (310 ms in all).
fn conflict_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(10 << attempt.min(4))
}

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most plaintext bytes in one record (sum of its values' sizes).
    pub max_record_bytes: usize,
    /// Most records in one batch.
    pub max_batch_records: usize,
    /// Most plaintext bytes in one batch.
    pub max_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 64 * 1024,
            max_batch_records: 500,
            max_batch_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Counters of crypto work, for tests and metrics.
#[derive(Debug, Default)]
struct Counters {
    fields_encrypted: AtomicU64,
    fields_decrypted: AtomicU64,
    erasures: AtomicU64,
    erasure_shred_micros: AtomicU64,
    erasure_compaction_micros: AtomicU64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Field values encrypted since start.
    pub fields_encrypted: u64,
    /// Field values decrypted since start.
    pub fields_decrypted: u64,
    /// Subject key versions in the cache.
    pub cached_subject_keys: usize,
    /// An estimate of the bytes they and their derived field keys hold.
    pub key_cache_bytes: usize,
    /// Subjects erased since start.
    pub erasures: u64,
    /// Time those erasures spent up to their commit point (the keyring
    /// saves, the bucket's re-wrap and the deletes), microseconds.
    pub erasure_shred_micros: u64,
    /// Time they spent compacting the deleted bytes out of the data files
    /// afterwards, microseconds.
    pub erasure_compaction_micros: u64,
}

/// Where the unsealed keyring is saved after a change (a file, or its
/// table in PostgreSQL), and the unseal key that seals it. Held only while
/// the vault is unsealed.
pub struct KeyringFile {
    /// Where the sealed keyring is kept.
    pub store: Arc<dyn KeyringStore>,
    /// The unseal key (zeroized on drop).
    pub unseal_key: Key256,
}

impl std::fmt::Debug for KeyringFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringFile")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl KeyringFile {
    /// The keyring in the file at `path`.
    pub fn at(path: PathBuf, unseal_key: Key256) -> Self {
        KeyringFile {
            store: Arc::new(KeyringPath(path)),
            unseal_key,
        }
    }

    /// Seals `keyring` and replaces the stored one atomically (a file:
    /// write, fsync, rename).
    pub fn save(&self, keyring: &Keyring) -> Result<()> {
        self.store
            .write(&keyring.seal(&self.unseal_key), keyring.generation())
    }

    /// Whether the stored keyring opens to one equal to `keyring` (after a
    /// save that reported an error).
    fn holds(&self, keyring: &Keyring) -> bool {
        self.store
            .read()
            .ok()
            .flatten()
            .and_then(|f| Keyring::unseal(&f, &self.unseal_key, keyring.region()).ok())
            .is_some_and(|on_disk| on_disk.same_state(keyring))
    }
}

/// How an engine runs, besides its store and keys.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Request limits.
    pub limits: Limits,
    /// Subject key versions kept unwrapped in memory.
    pub key_cache_capacity: usize,
    /// Pace of the root-key re-wrap job.
    pub rewrap: RewrapOptions,
    /// Pace of the blind-index rebuild after an index-key rotation.
    pub reindex: ReindexOptions,
    /// The access policy in force (shared with the server, which reloads it).
    pub policy: Arc<PolicyHandle>,
    /// When audit checkpoints are signed.
    pub checkpoints: CheckpointOptions,
    /// Open with a keyring older than the data folder has seen (disaster
    /// recovery from a keyring backup; custodians ask for it at unseal).
    pub accept_keyring_rollback: bool,
    /// Keys a root key version may wrap before the vault asks for a root
    /// rotation (at most 2^32, NIST SP 800-38D's bound for random nonces).
    pub rotate_root_after_wraps: u64,
    /// Budgets, lockouts and alerts (shared with the server and every
    /// engine of the vault).
    pub monitor: Arc<crate::monitor::Monitor>,
    /// The witnesses whose cosignatures of checkpoints the vault takes
    /// (`[audit] witnesses`).
    pub witnesses: Vec<crate::audit::checkpoint::WitnessKey>,
    /// How often the background thread sweeps collections with a
    /// retention for records to purge (`Duration::ZERO`: never).
    pub retention_sweep_interval: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            limits: Limits::default(),
            key_cache_capacity: 10_000,
            rewrap: RewrapOptions::default(),
            reindex: ReindexOptions::default(),
            policy: Arc::new(PolicyHandle::builtin()),
            checkpoints: CheckpointOptions::default(),
            accept_keyring_rollback: false,
            rotate_root_after_wraps: DEFAULT_ROTATE_AFTER_WRAPS,
            monitor: Arc::new(crate::monitor::Monitor::default()),
            witnesses: Vec::new(),
            retention_sweep_interval: retention::DEFAULT_SWEEP_INTERVAL,
        }
    }
}

/// The vault engine of one region: an unsealed keyring over a store.
#[derive(Debug)]
pub struct Engine {
    store: Arc<dyn Store>,
    /// The keyring as of now. Custody operations replace it (after saving
    /// the file); readers take a snapshot.
    keyring: RwLock<Arc<Keyring>>,
    keyring_file: KeyringFile,
    region: Region,
    cache: KeyCache,
    limits: Limits,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Serialises creation of subject keys and of collections, so two
    /// concurrent requests never make two keys (or schemas) for one name,
    /// and no key is wrapped under a root key that a rotation just replaced.
    create_lock: Mutex<()>,
    /// Serialises custody operations (keyring changes, subject-key rotation
    /// and erasure, re-wrap batches): none of them overwrites what another
    /// deleted.
    custody_lock: Mutex<()>,
    /// Per-subject locks (striped by storage name): writers of a subject
    /// share one; rotating or erasing the subject takes it exclusively, as
    /// a blind-index rebuild batch takes its records' owners' stripes and
    /// an index-key rotation every stripe (ascending, before custody).
    subject_locks: Vec<Arc<Stripe>>,
    /// On a shared store, the fence epochs this server knows (`shared.rs`).
    fence_epochs: shared::FenceEpochs,
    /// The names rows are stored under.
    names: StorageNames,
    rewrap_options: RewrapOptions,
    reindex_options: ReindexOptions,
    checkpoints: CheckpointOptions,
    /// How often the background thread sweeps expired records.
    retention_sweep_interval: Duration,
    /// The audit (and receipt) signing key and the checkpoints' origin:
    /// fixed for the keyring's life, derived once.
    audit_signer: ed25519_dalek::SigningKey,
    audit_origin: String,
    rewrap: rewrap::JobState,
    /// The blind-index rebuild after an index-key rotation.
    reindex: reindex::JobState,
    /// Keys wrapped per root key version (NIST's bound on random nonces).
    wraps: wraps::WrapCounts,
    policy: Arc<PolicyHandle>,
    monitor: Arc<crate::monitor::Monitor>,
    /// Storage names of the honey subjects (decoys: see `honey.rs`).
    honey: RwLock<std::collections::HashSet<[u8; 32]>>,
    audit: Arc<AuditLog>,
    witnesses: Vec<crate::audit::checkpoint::WitnessKey>,
    closed: AtomicBool,
    counters: Counters,
    /// On a shared store, the newest shared policy this server took up or
    /// handed the others (`shared.rs`).
    policy_seq: std::sync::atomic::AtomicU64,
    /// (keyring generation, folder generation) when opened with an older
    /// keyring by the custodians' choice.
    accepted_rollback: Option<(u64, u64)>,
}

impl Engine {
    /// An engine over `store`, checking that the data folder belongs to this
    /// keyring and region (and recording both in a fresh folder).
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Keyring,
        keyring_file: KeyringFile,
        options: EngineOptions,
    ) -> Result<Self> {
        let audit = Arc::new(AuditLog::open(Arc::clone(&store))?);
        options.monitor.attach(&audit)?;
        Self::with_audit(store, keyring, keyring_file, options, audit)
    }

    /// [`Engine::new`] appending to an audit log the caller already opened
    /// over the same store (the vault's, which also records sealed-time
    /// events): one log, one writer.
    pub fn with_audit(
        store: Arc<dyn Store>,
        keyring: Keyring,
        keyring_file: KeyringFile,
        options: EngineOptions,
        audit: Arc<AuditLog>,
    ) -> Result<Self> {
        let EngineOptions {
            limits,
            key_cache_capacity,
            rewrap: rewrap_options,
            reindex: reindex_options,
            policy,
            checkpoints,
            accept_keyring_rollback,
            rotate_root_after_wraps,
            monitor,
            witnesses,
            retention_sweep_interval,
        } = options;
        let region = keyring.region().clone();
        match (
            store.get(Table::Meta, META_REGION)?,
            store.get(Table::Meta, META_KEYRING_ID)?,
        ) {
            (None, None) => {
                let mut ws = WriteSet::new();
                ws.put(
                    Table::Meta,
                    META_FORMAT.to_vec(),
                    DATA_FOLDER_FORMAT.to_be_bytes().to_vec(),
                );
                ws.put(
                    Table::Meta,
                    META_REGION.to_vec(),
                    region.as_str().as_bytes().to_vec(),
                );
                ws.put(Table::Meta, META_KEYRING_ID.to_vec(), keyring.id().to_vec());
                store.write(ws)?;
            }
            (Some(r), Some(id)) => {
                if r != region.as_str().as_bytes() {
                    return Err(Error::Config(format!(
                        "the data folder holds data of region {}; this server is configured for region {}",
                        String::from_utf8_lossy(&r),
                        region
                    )));
                }
                if id != keyring.id() {
                    return Err(crate::keys::KeyringError::ForeignDataFolder.into());
                }
                check_format(store.as_ref())?;
            }
            _ => return Err(Error::Storage("data folder metadata is incomplete".into())),
        }
        let accepted_rollback =
            check_keyring_generation(store.as_ref(), &keyring, accept_keyring_rollback)?;
        let mut collections = HashMap::new();
        for (_, v) in store.scan_prefix(Table::Collections, b"")? {
            let c: Collection = serde_json::from_slice(&v).map_err(|_| Error::Integrity)?;
            collections.insert(c.name.clone(), Arc::new(c));
        }
        let rewrap = rewrap::JobState::load(store.as_ref())?;
        let reindex = reindex::JobState::load(store.as_ref())?;
        let honey = RwLock::new(honey::load(store.as_ref())?);
        let wraps =
            wraps::WrapCounts::load(store.as_ref(), rotate_root_after_wraps, store.shared())?;
        let audit_signer = crate::keys::signing_key(&keyring);
        let audit_origin = format!("vault/{region}/{}", to_hex(keyring.id()));
        let names = StorageNames::of(&keyring);
        let store_shared = store.shared();
        let engine = Engine {
            store,
            keyring: RwLock::new(Arc::new(keyring)),
            keyring_file,
            region,
            cache: KeyCache::new(key_cache_capacity),
            limits,
            collections: RwLock::new(collections),
            create_lock: Mutex::new(()),
            custody_lock: Mutex::new(()),
            subject_locks: (0..SUBJECT_STRIPES).map(|_| Arc::default()).collect(),
            fence_epochs: shared::FenceEpochs::new(store_shared),
            names,
            rewrap_options,
            reindex_options,
            checkpoints,
            retention_sweep_interval,
            audit_signer,
            audit_origin,
            rewrap,
            reindex,
            wraps,
            policy,
            monitor,
            honey,
            audit,
            witnesses,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            policy_seq: std::sync::atomic::AtomicU64::new(0),
            accepted_rollback,
        };
        match engine.finish_interrupted_erasures() {
            // On a shared store another server may be finishing the same
            // erasure, or changing the keyring: the next erasure here (or
            // there) finishes it.
            Err(Error::Conflict) if engine.is_shared() => {
                tracing::warn!(
                    "an interrupted erasure met another server's change; finished later"
                );
            }
            other => other?,
        }
        // The policy last reloaded through another server, from the start.
        if let Err(e) = engine.follow_policy() {
            tracing::warn!(error = %e, "could not take up the policy another server reloaded");
        }
        Ok(engine)
    }

    /// The keyring rollback this engine was opened with, if custodians
    /// accepted one: (the keyring's generation, the folder's).
    pub fn accepted_keyring_rollback(&self) -> Option<(u64, u64)> {
        self.accepted_rollback
    }

    /// Budgets, lockouts and alerts.
    pub fn monitor(&self) -> &Arc<crate::monitor::Monitor> {
        &self.monitor
    }

    /// The policy in force (a snapshot: a reload does not change it).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// A snapshot of the keyring.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Saves `keyring` to the keyring file, then makes it the engine's.
    /// Held under `create_lock` for the swap, so no subject key is wrapped
    /// under a root key version that is no longer current.
    fn replace_keyring(&self, keyring: Keyring) -> Result<()> {
        let (keyring, saved) = self.save_keyring(keyring)?;
        let _guard = lock(&self.create_lock);
        self.swap_keyring(keyring);
        saved
    }

    /// Makes `keyring` (saved) the engine's; the caller holds `create_lock`.
    fn swap_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
    }

    /// Raises the generation of `keyring` and saves it. `Err`: not saved;
    /// `Ok((keyring, Err))`: saved, but not confirmed durable (memory must
    /// follow the file all the same).
    fn save_keyring(&self, keyring: Keyring) -> Result<(Keyring, Result<()>)> {
        self.check_open()?;
        self.save_keyring_even_if_closed(keyring)
    }

    /// [`Engine::save_keyring`] on an engine that may have been closed
    /// meanwhile: for an erasure's commit point, once its batch is written
    /// (a seal must not leave the old epoch in the file). No other engine
    /// opens the keyring file while this one lives: the vault starts no new
    /// session, and a rekey saves nothing, until its last user drops it.
    fn save_keyring_even_if_closed(&self, mut keyring: Keyring) -> Result<(Keyring, Result<()>)> {
        keyring.next_generation();
        let saved = match self.keyring_file.save(&keyring) {
            // The file may hold the new keyring even so (the rename went
            // through, a later fsync failed). Then memory must follow it, or
            // the next save would write the old state back (a destroyed key
            // returning, an erasure forgotten).
            Err(e) if !self.keyring_file.holds(&keyring) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "keyring saved, but not confirmed durable");
                Err(e)
            }
            Ok(()) => Ok(()),
        };
        // The folder follows the keyring: from now on an older keyring
        // file is refused. (If this write fails the folder lags behind,
        // which only lets through a keyring that is no older than the
        // last it saw; the next open catches up.)
        if let Err(e) = write_keyring_generation(self.store.as_ref(), keyring.generation()) {
            tracing::error!(error = %e, "the data folder could not record the keyring generation");
        }
        Ok((keyring, saved))
    }

    /// Stops background work and drops every cached key. The engine answers
    /// no more re-wrap work; in-flight requests finish.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.rewrap.wake();
        self.cache.clear();
        self.store.resign();
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Refuses work on a closed (sealed) engine. Requests that started
    /// before the seal and reach this point afterwards stop here; custody
    /// operations check again once they hold `custody_lock`, so a closed
    /// engine never changes the keyring file.
    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Sealed);
        }
        Ok(())
    }

    /// The region this engine serves.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The configured limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Crypto counters.
    pub fn stats(&self) -> Stats {
        Stats {
            fields_encrypted: self.counters.fields_encrypted.load(Ordering::Relaxed),
            fields_decrypted: self.counters.fields_decrypted.load(Ordering::Relaxed),
            cached_subject_keys: self.cache.len(),
            key_cache_bytes: self.cache.approx_bytes(),
            erasures: self.counters.erasures.load(Ordering::Relaxed),
            erasure_shred_micros: self.counters.erasure_shred_micros.load(Ordering::Relaxed),
            erasure_compaction_micros: self
                .counters
                .erasure_compaction_micros
                .load(Ordering::Relaxed),
        }
    }

    // ---- collections ----

    /// Creates a collection. An empty region means this vault's region.
    pub fn create_collection(&self, caller: &Caller, collection: Collection) -> Result<Collection> {
        self.authorize_audited(
            caller,
            Operation::Admin,
            Some(&collection.name),
            "create_collection",
        )?;
        let mut ev = self.event(caller, Operation::Admin, Some(&collection.name));
        ev.operation = "create_collection".into();
        let result = self.create_collection_audited(collection, ev.clone());
        self.audit_failure(ev, result)
    }

    fn create_collection_audited(
        &self,
        mut collection: Collection,
        ev: Event,
    ) -> Result<Collection> {
        if collection.region.is_empty() {
            collection.region = self.region.to_string();
        }
        collection.validate()?;
        self.check_region(&collection)?;
        let _guard = lock(&self.create_lock);
        let exists = || Error::AlreadyExists(format!("collection {}", collection.name));
        if self.read_collections().contains_key(&collection.name)
            || self.load_shared_collection(&collection.name)?.is_some()
        {
            return Err(exists());
        }
        let json = serde_json::to_vec(&collection).map_err(|e| Error::Storage(e.to_string()))?;
        let mut ws = WriteSet::new();
        let key = collection.name.as_bytes().to_vec();
        if self.is_shared() {
            // Another server may create it at the same moment: one wins.
            ws.expect(Table::Collections, key.clone(), None);
        }
        ws.put(Table::Collections, key, json);
        match self.commit(ws, ev.clone()) {
            Ok(_) => {}
            // Created through another server meanwhile (or the log's head
            // moved on too often: then it is not there, and says so).
            Err(Error::Conflict) => {
                return match self.load_shared_collection(&collection.name)? {
                    Some(_) => Err(exists()),
                    None => Err(Error::Conflict),
                };
            }
            Err(e) => return Err(e),
        }
        self.collections
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(collection.name.clone(), Arc::new(collection.clone()));
        tracing::info!(collection = %collection.name, principal = %ev.principal, "collection created");
        Ok(collection)
    }

    /// One collection's schema.
    /// Any principal whose policy grants it anything on the collection may
    /// read its schema (no personal data, no purpose needed).
    pub fn collection(&self, caller: &Caller, name: &str) -> Result<Arc<Collection>> {
        let mut ev = self.event(caller, Operation::Read, Some(name));
        ev.operation = "get_collection".into();
        let result = self
            .policy()
            .authorize_schema(caller, name)
            .and_then(|()| self.lookup_collection(name));
        match result {
            Ok(c) => {
                self.commit(WriteSet::new(), ev)?;
                Ok(c)
            }
            Err(e) => self.audit_failure(ev, Err(e)),
        }
    }

    /// A collection's schema without an authorization check: for the
    /// vault's own use (the policy check shows a schema's fields).
    pub fn collection_schema(&self, name: &str) -> Result<Arc<Collection>> {
        self.lookup_collection(name)
    }

    /// Every collection whose schema the caller may read, by name.
    pub fn list_collections(&self, caller: &Caller) -> Result<Vec<Arc<Collection>>> {
        let mut ev = self.event(caller, Operation::Read, None);
        ev.operation = "list_collections".into();
        self.commit(WriteSet::new(), ev)?;
        self.load_shared_collections()?;
        let policy = self.policy();
        let mut all: Vec<_> = self
            .read_collections()
            .values()
            .filter(|c| policy.authorize_schema(caller, &c.name).is_ok())
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn read_collections(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Collection>>> {
        self.collections.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup_collection(&self, name: &str) -> Result<Arc<Collection>> {
        validate_name("collection name", name, true)?;
        if let Some(c) = self.read_collections().get(name) {
            return Ok(Arc::clone(c));
        }
        // Made through another server of a shared store?
        self.load_shared_collection(name)?
            .ok_or_else(|| Error::NotFound(format!("collection {name}")))
    }

    fn check_region(&self, c: &Collection) -> Result<()> {
        if c.region != self.region.as_str() {
            return Err(Error::WrongRegion {
                collection: c.name.clone(),
                collection_region: c.region.clone(),
                vault_region: self.region.to_string(),
            });
        }
        Ok(())
    }

    /// A collection whose data this vault may read and write.
    fn data_collection(&self, name: &str) -> Result<Arc<Collection>> {
        let c = self.lookup_collection(name)?;
        self.check_region(&c)?;
        Ok(c)
    }

    // ---- records ----

    /// Creates or replaces one record.
    pub fn put_record(&self, caller: &Caller, record: Record) -> Result<()> {
        self.put_records(caller, vec![record]).map(|_| ())
    }

    /// Creates or replaces records atomically: one durable write for all,
    /// with its audit event in the same batch.
    pub fn put_records(&self, caller: &Caller, records: Vec<Record>) -> Result<usize> {
        self.retrying(|| self.put_records_once(caller, &records))
    }

    fn put_records_once(&self, caller: &Caller, records: &[Record]) -> Try<usize> {
        match self.stage_put(caller, records, Wait::Block) {
            Some(staged) => self.settle_try(staged),
            None => Some(Err(gave_up())),
        }
    }

    /// Whether a write whose commit failed on a condition (it wrote
    /// nothing, nor its event) is tried again, after `attempt` tries: on a
    /// shared store, where another server's rotation, erasure, purge or
    /// rebuild batch of the same subjects, or its keyring change, may have
    /// been under way, a few times.
    fn retry_conflict(&self, attempt: u32) -> bool {
        self.is_shared() && attempt < CONFLICT_RETRIES
    }

    /// Runs a write's tries (`once`) for as long as its commit fails on a
    /// condition and [`Engine::retry_conflict`] allows, waiting between
    /// tries and taking up the stored keyring first.
    fn retrying<T>(&self, mut once: impl FnMut() -> Try<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            match once() {
                None if self.retry_conflict(attempt) => {
                    std::thread::sleep(conflict_backoff(attempt));
                    self.follow_keyring()?;
                    attempt += 1;
                }
                tried => return tried.unwrap_or(Err(Error::Conflict)),
            }
        }
    }

    /// [`Engine::retrying`] for the async request path.
    async fn retrying_async<T, F>(self: &Arc<Self>, mut once: impl FnMut() -> F) -> Result<T>
    where
        F: std::future::Future<Output = Try<T>>,
    {
        let mut attempt = 0;
        loop {
            match once().await {
                None if self.retry_conflict(attempt) => {
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                    let engine = Arc::clone(self);
                    on_blocking_pool(move || engine.follow_keyring()).await?;
                    attempt += 1;
                }
                tried => return tried.unwrap_or(Err(Error::Conflict)),
            }
        }
    }

    /// [`Engine::put_records`] for the async request path: validation,
    /// policy, reads and encryption run inline, then the batch's commit is
    /// awaited without holding a thread, the subjects' locks held until it
    /// is durable. A put that would wait for long (a subject's lock held
    /// by a rotation or erasure, a new subject key to store) runs on the
    /// blocking pool instead.
    pub async fn put_records_async(
        self: &Arc<Self>,
        caller: &Caller,
        records: Vec<Record>,
    ) -> Result<usize> {
        let records = Arc::new(records);
        self.retrying_async(|| {
            let (engine, caller, records) =
                (Arc::clone(self), caller.clone(), Arc::clone(&records));
            async move {
                match engine.stage_put(&caller, &records, Wait::Never) {
                    Some(staged) => engine.settle_async_try(staged).await,
                    None => {
                        on_blocking_pool(move || Ok(engine.put_records_once(&caller, &records)))
                            .await
                            .unwrap_or_else(|e| Some(Err(e)))
                    }
                }
            }
        })
        .await
    }

    /// A put up to its commit; `None` if it would have to wait ([`Wait`]).
    fn stage_put(&self, caller: &Caller, records: &[Record], wait: Wait) -> Option<Staged<usize>> {
        let mut ev = self.event(caller, Operation::Write, None);
        // Every record asked for, allowed or not (the first batch's limit
        // of them): attempts show in the log too. Subjects are named once
        // the write is allowed, so a refused caller cannot fill anyone's
        // access ledger.
        let asked = &records[..records.len().min(self.limits.max_batch_records)];
        ev.collection = self.shown_collections(asked.iter().map(|r| r.collection.as_str()));
        let kr = self.keyring();
        ev.records = asked
            .iter()
            .map(|r| to_hex(kr.record_pseudonym(&r.collection, &r.id)))
            .collect();
        drop(kr);
        let result = self.put_records_audited(caller, records, &mut ev, wait);
        Staged::of(ev, result)
    }

    fn put_records_audited(
        &self,
        caller: &Caller,
        records: &[Record],
        ev: &mut Event,
        wait: Wait,
    ) -> Result<Option<Prepared<usize>>> {
        self.check_open()?;
        let policy = self.policy();
        if records.is_empty() {
            return Err(Error::InvalidArgument("no records to write".into()));
        }
        if records.len() > self.limits.max_batch_records {
            return Err(Error::LimitExceeded(format!(
                "{} records in one batch; the limit is {}",
                records.len(),
                self.limits.max_batch_records
            )));
        }
        // Validate everything before any key is made or anything written.
        let mut seen = HashSet::new();
        let mut batch_bytes = 0usize;
        let mut schemas = Vec::with_capacity(records.len());
        for r in records {
            policy.authorize(caller, Operation::Write, Some(&r.collection))?;
            let c = self.data_collection(&r.collection)?;
            policy.authorize_write(caller, &c, r.fields.keys().map(String::as_str))?;
            validate_id("record id", &r.id)?;
            validate_id("subject id", &r.subject_id)?;
            if !seen.insert((r.collection.as_str(), r.id.as_str())) {
                return Err(Error::InvalidArgument(format!(
                    "a record id appears twice in collection {} in one batch",
                    r.collection
                )));
            }
            let mut bytes = 0usize;
            for (name, value) in &r.fields {
                let f = c.field(name).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown field {} in collection {}",
                        shown(name),
                        c.name
                    ))
                })?;
                if value.field_type() != f.field_type {
                    return Err(Error::InvalidArgument(format!(
                        "field {name} of collection {} expects {}, got {}",
                        c.name,
                        f.field_type,
                        value.field_type()
                    )));
                }
                value.validate(name)?;
                bytes += value.size();
            }
            if bytes > self.limits.max_record_bytes {
                return Err(Error::LimitExceeded(format!(
                    "record of {bytes} bytes; the limit is {} bytes",
                    self.limits.max_record_bytes
                )));
            }
            batch_bytes += bytes;
            schemas.push(c);
        }
        if batch_bytes > self.limits.max_batch_bytes {
            return Err(Error::LimitExceeded(format!(
                "batch of {batch_bytes} bytes; the limit is {} bytes",
                self.limits.max_batch_bytes
            )));
        }

        let names: Vec<RecordName> = records
            .iter()
            .map(|r| self.names.record(&r.collection, &r.id))
            .collect();
        let keys: Vec<_> = records
            .iter()
            .zip(&names)
            .map(|(r, name)| record_key(&r.collection, name))
            .collect();
        let subjects: Vec<SubjectName> = records
            .iter()
            .map(|r| self.names.subject(&r.subject_id))
            .collect();
        let Some((locks, previous)) = self.lock_writers(&subjects, &keys, wait)? else {
            return Ok(None);
        };
        let mut ws = WriteSet::new();
        let mut encrypted = 0u64;
        let now_ms = self.monitor.now_ms();
        // Replacing a record drops its old fields: the caller's write rules
        // must cover those too, or a writer of one field could erase the
        // others. (An undecodable old record leaves at most a stale index
        // entry, which every user re-checks.)
        let mut old_owners = Vec::with_capacity(records.len());
        for (previous, c) in previous.iter().zip(&schemas) {
            let old = previous
                .as_deref()
                .and_then(|b| StoredRecord::decode(b).ok())
                .map(|(old, _)| old);
            if let Some(old) = &old {
                policy.authorize_write(caller, c, old.fields.iter().map(|f| f.name.as_str()))?;
            }
            old_owners.push(old.map(|o| o.subject));
        }
        // Before the keys are read: a rotation or erasure of one of these
        // subjects on another server in between fails this write.
        ws.expect_fences(
            self.fence_expectations(subjects.iter().chain(old_owners.iter().flatten()))?,
        );
        // Before any token is made: an index-key rotation on another
        // server in between fails this write (tried again under the new
        // key), rather than leave rows of the old key its rebuild passed.
        if schemas.iter().any(|c| c.fields.iter().any(|f| f.indexed)) {
            match self.index_fence_expectation(wait)? {
                Some(fence) => ws.expect_fences(fence),
                None => return Ok(None),
            }
        }
        for ((((r, c), key), old_owner), (name, subject)) in records
            .iter()
            .zip(&schemas)
            .zip(keys)
            .zip(old_owners)
            .zip(names.iter().zip(&subjects))
        {
            let Some(sk) = self.current_subject_key(subject, wait)? else {
                return Ok(None);
            };
            let fields = r
                .fields
                .iter()
                .map(|(name, value)| (name.as_str(), value.encode()));
            let ids = Ids {
                collection: &r.collection,
                id: &r.id,
                name,
                subject_id: &r.subject_id,
                subject,
            };
            let value = self.seal_record(&sk, &ids, Some(now_ms), fields);
            encrypted += r.fields.len() as u64;
            // Keep the subject → records index true: a replaced record may
            // have belonged to another subject.
            if let Some(old_owner) = old_owner.filter(|o| o != subject) {
                ws.delete(Table::SubjectRecords, subject_record_key(&old_owner, &key));
            }
            ws.put(
                Table::SubjectRecords,
                subject_record_key(subject, &key),
                Vec::new(),
            );
            self.index_record(
                &mut ws,
                c,
                &key,
                r.fields.iter().map(|(n, v)| (n.as_str(), v)),
            )?;
            ws.put(Table::Records, key, value);
        }
        let kr = self.keyring();
        let mut fields = BTreeSet::new();
        for r in records {
            ev.subjects
                .push(to_hex(kr.subject_pseudonym(&r.subject_id)));
            fields.extend(r.fields.keys().cloned());
        }
        ev.subjects.sort();
        ev.subjects.dedup();
        ev.fields = fields.into_iter().collect();
        // Counted as encrypted, whether or not the batch then commits.
        self.counters
            .fields_encrypted
            .fetch_add(encrypted, Ordering::Relaxed);
        Ok(Some((ws, locks, records.len())))
    }

    /// Encrypts one record's ids and fields under `sk` and returns the
    /// stored value (body and record tag).
    fn seal_record<'a>(
        &self,
        sk: &SubjectKeys,
        ids: &Ids<'_>,
        written_ms: Option<u64>,
        fields: impl Iterator<Item = (&'a str, Zeroizing<Vec<u8>>)>,
    ) -> Vec<u8> {
        let region = self.region.as_str();
        let collection = ids.collection;
        let seal = |name: &str, record_id: &str, plaintext: &[u8]| {
            let cipher = sk.field_cipher(region, collection, name);
            let aad = FieldAad {
                region,
                collection,
                record_id,
                field: name,
            };
            seal_field(&cipher, sk.version(), &aad, plaintext)
        };
        let fields = fields
            .map(|(name, plaintext)| StoredField {
                name: name.to_owned(),
                envelope: seal(name, ids.id, &plaintext),
            })
            .collect();
        let stored = StoredRecord {
            subject: *ids.subject,
            key_version: sk.version(),
            written_ms,
            ids: seal(
                labels::IDS_FIELD,
                &to_hex(ids.name),
                &encode_ids(ids.subject_id, ids.id),
            ),
            fields,
            tag: [0; RECORD_TAG_LEN],
        };
        let mut value = stored.encode_body();
        let ctx = RecordContext {
            region,
            collection,
            record_id: ids.id,
        };
        let tag = record_tag(sk.record_key(region), &ctx, &value);
        value.extend_from_slice(&tag);
        value
    }

    /// Decodes a stored record, opens its ids envelope (authenticated on
    /// its own, and bound to the row's name) and checks its record tag
    /// under the subject key it names, before any field is decrypted.
    /// `expected`: the record id the caller asked for, if any.
    fn open_record(
        &self,
        collection: &str,
        name: &RecordName,
        expected: Option<&str>,
        bytes: &[u8],
    ) -> Result<OpenedRecord> {
        let (stored, body) = StoredRecord::decode(bytes)?;
        let sk = self.subject_key(&stored.subject, stored.key_version)?;
        if EnvelopeHeader::parse(&stored.ids)?.key_version != stored.key_version {
            return Err(Error::Integrity);
        }
        let region = self.region.as_str();
        let aad = FieldAad {
            region,
            collection,
            record_id: &to_hex(name),
            field: labels::IDS_FIELD,
        };
        let cipher = sk.field_cipher(region, collection, labels::IDS_FIELD);
        // The envelope opened: it was sealed for this row (its name is in
        // the AAD) under the key of the subject the record names (the key's
        // wrap is bound to that name). So the ids are this row's and this
        // subject's without recomputing either name.
        let (subject_id, id) = decode_ids(&open_field(&cipher, &aad, &stored.ids)?)?;
        if expected.is_some_and(|e| e != id) {
            return Err(Error::Integrity);
        }
        // The record tag vouches for the subject, the key version, the ids
        // and the set of fields.
        let ctx = RecordContext {
            region,
            collection,
            record_id: &id,
        };
        verify_record_tag(sk.record_key(region), &ctx, body, &stored.tag)?;
        Ok(OpenedRecord {
            stored,
            sk,
            subject_id,
            id,
        })
    }

    /// Opens the record `bytes` read at `key` (see [`Engine::open_record`])
    /// as every read does: `None` when it is not there for the caller (an
    /// erased subject's record, say from a restored backup: its key is
    /// refused and nothing is decrypted; or gone since it was read).
    fn open_readable(
        &self,
        collection: &str,
        name: &RecordName,
        expected: Option<&str>,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<Option<OpenedRecord>> {
        let opened = match self.open_record(collection, name, expected, bytes) {
            // A subject-key rotation may have replaced the record and
            // destroyed the key it named between the read and now: read it
            // once more. A real integrity failure fails twice.
            Err(Error::Integrity) => match self.store.get(Table::Records, key)? {
                Some(again) if again != bytes => {
                    self.open_record(collection, name, expected, &again)
                }
                Some(_) => Err(Error::Integrity),
                None => return Ok(None),
            },
            other => other,
        };
        match opened {
            Ok(o) => Ok(Some(o)),
            Err(Error::SubjectErased) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `stored`, a record of `c`, is past its collection's time to
    /// live by the vault's clock (and so unreadable). A record of format 2
    /// (no write time) never expires.
    fn expired(&self, c: &Collection, stored: &StoredRecord) -> bool {
        match (c.retention, stored.written_ms) {
            (Some(r), Some(written)) => self.monitor.now_ms() >= r.expires_at_ms(written),
            _ => false,
        }
    }

    /// Decrypts one field of an opened record.
    fn open_stored_field(
        &self,
        opened: &OpenedRecord,
        collection: &str,
        sf: &StoredField,
    ) -> Result<Zeroizing<Vec<u8>>> {
        if EnvelopeHeader::parse(&sf.envelope)?.key_version != opened.stored.key_version {
            return Err(Error::Integrity);
        }
        let cipher = opened
            .sk
            .field_cipher(self.region.as_str(), collection, &sf.name);
        let aad = FieldAad {
            region: self.region.as_str(),
            collection,
            record_id: &opened.id,
            field: &sf.name,
        };
        let plaintext = open_field(&cipher, &aad, &sf.envelope)?;
        self.counters
            .fields_decrypted
            .fetch_add(1, Ordering::Relaxed);
        Ok(plaintext)
    }

    /// Reads one record, decrypting only the projected fields (all if empty).
    pub fn get_record(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        fields: &[String],
    ) -> Result<Record> {
        let found = self.get_records(caller, collection, &[id.to_owned()], fields);
        the_one(found, collection)
    }

    /// [`Engine::get_record`] for the async request path (see
    /// [`Engine::get_records_async`]).
    pub async fn get_record_async(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        fields: &[String],
    ) -> Result<Record> {
        let ids = [id.to_owned()];
        let found = self
            .get_records_async(caller, collection, &ids, fields)
            .await;
        the_one(found, collection)
    }

    /// Reads records of one collection; returns those found (in request
    /// order) and the ids that have no record.
    ///
    /// Plaintext leaves only after the read's audit event is durable: if
    /// the event cannot be written, the read fails.
    pub fn get_records(
        &self,
        caller: &Caller,
        collection: &str,
        ids: &[String],
        fields: &[String],
    ) -> Result<(Vec<Record>, Vec<String>)> {
        self.settle(self.stage_get(caller, collection, ids, fields))
    }

    /// [`Engine::get_records`] for the async request path: the reads,
    /// checks and decryption run inline (they take no lock for long), then
    /// the read event's commit is awaited without holding a thread. The
    /// plaintext is returned only once the event is durable.
    pub async fn get_records_async(
        &self,
        caller: &Caller,
        collection: &str,
        ids: &[String],
        fields: &[String],
    ) -> Result<(Vec<Record>, Vec<String>)> {
        self.settle_async(self.stage_get(caller, collection, ids, fields))
            .await
    }

    /// A read up to its commit (reads never wait for long).
    fn stage_get(
        &self,
        caller: &Caller,
        collection: &str,
        ids: &[String],
        fields: &[String],
    ) -> Staged<(Vec<Record>, Vec<String>)> {
        let mut ev = self.event(caller, Operation::Read, Some(collection));
        // Every id asked for, found or not, allowed or not: probing for
        // ids shows in the log.
        let kr = self.keyring();
        for id in ids.iter().take(self.limits.max_batch_records) {
            ev.records.push(to_hex(kr.record_pseudonym(collection, id)));
        }
        // A caller whose budget is used up is refused before anything is
        // read: it learns nothing, not even which ids exist.
        if !caller.internal {
            let policy = self.policy();
            if let Err(e) = self.monitor().check_budgets(policy.budgets(), caller) {
                return Staged::failed(ev, e);
            }
        }
        let (found, missing) = match self.get_records_unaudited(caller, collection, ids, fields) {
            Ok(r) => r,
            Err(e) => return Staged::failed(ev, e),
        };
        self.finish_read(caller, collection, ev, found, missing)
    }

    /// The end of a read (or search) that found `found`: its event names
    /// the subjects, fields and bytes returned; a honey record raises its
    /// alert; the read budget is charged (over it, nothing is returned);
    /// the metrics count it.
    fn finish_read<T>(
        &self,
        caller: &Caller,
        collection: &str,
        mut ev: Event,
        found: Vec<Record>,
        rest: T,
    ) -> Staged<(Vec<Record>, T)> {
        let kr = self.keyring();
        let mut returned = BTreeSet::new();
        for r in &found {
            ev.subjects
                .push(to_hex(kr.subject_pseudonym(&r.subject_id)));
            for (name, value) in &r.fields {
                returned.insert(name.clone());
                ev.bytes += value.size() as u64;
            }
        }
        ev.subjects.sort();
        ev.subjects.dedup();
        ev.fields = returned.into_iter().collect();
        let honey = self.honey_among(found.iter().map(|r| r.subject_id.as_str()));
        if honey > 0 && !caller.internal {
            self.monitor().honey_read(caller, collection, honey);
        }
        // Over a read budget: refused, and nothing of it returned. The ids
        // returned count as bytes too (a read of redacted fields only still
        // maps record ids to subject ids).
        if !caller.internal {
            let policy = self.policy();
            let id_bytes: usize = found.iter().map(|r| r.id.len() + r.subject_id.len()).sum();
            if let Err(e) = self.monitor().charge(
                policy.budgets(),
                caller,
                found.len() as u64,
                ev.bytes + id_bytes as u64,
            ) {
                return Staged::failed(ev, e);
            }
            if let Ok(c) = self.data_collection(collection) {
                let categories: Vec<&'static str> = found
                    .iter()
                    .flat_map(|r| r.fields.keys())
                    .filter_map(|name| c.field(name).map(|f| f.category.name()))
                    .collect();
                self.monitor().metrics().read(
                    &caller.principal.name,
                    caller.purpose.as_deref(),
                    collection,
                    found.len() as u64,
                    ev.bytes,
                    &categories,
                );
            }
        }
        Staged {
            ws: WriteSet::new(),
            ev,
            outcome: Ok((found, rest)),
            locks: Vec::new(),
        }
    }

    fn get_records_unaudited(
        &self,
        caller: &Caller,
        collection: &str,
        ids: &[String],
        fields: &[String],
    ) -> Result<(Vec<Record>, Vec<String>)> {
        self.check_open()?;
        let policy = self.policy();
        policy.authorize(caller, Operation::Read, Some(collection))?;
        let c = self.data_collection(collection)?;
        let view = policy.field_view(caller, Operation::Read, &c)?;
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no record ids".into()));
        }
        if ids.len() > self.limits.max_batch_records {
            return Err(Error::LimitExceeded(format!(
                "{} ids in one batch; the limit is {}",
                ids.len(),
                self.limits.max_batch_records
            )));
        }
        for id in ids {
            validate_id("record id", id)?;
        }
        for f in fields {
            if c.field(f).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "unknown field {} in collection {}",
                    shown(f),
                    c.name
                )));
            }
        }
        let projected = |name: &str| fields.is_empty() || fields.iter().any(|f| f == name);

        let names: Vec<RecordName> = ids
            .iter()
            .map(|id| self.names.record(collection, id))
            .collect();
        let keys: Vec<_> = names.iter().map(|n| record_key(collection, n)).collect();
        let values = self.read_rows(Table::Records, &keys)?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for (((id, key), name), value) in ids.iter().zip(&keys).zip(&names).zip(values) {
            let Some(bytes) = value else {
                missing.push(id.clone());
                continue;
            };
            let Some(opened) = self.open_readable(collection, name, Some(id), key, &bytes)? else {
                missing.push(id.clone());
                continue;
            };
            if self.expired(&c, &opened.stored) {
                missing.push(id.clone());
                continue;
            }
            found.push(self.visible_record(
                collection,
                &c,
                &view,
                &projected,
                id.clone(),
                &opened,
            )?);
        }
        Ok((found, missing))
    }

    /// The record a caller sees of `opened` (record `id`): its projected
    /// fields at the levels of `view`. A redacted field is never
    /// decrypted; only strings can be masked (a masked field of another
    /// type is redacted).
    fn visible_record(
        &self,
        collection: &str,
        c: &Collection,
        view: &FieldView,
        projected: &dyn Fn(&str) -> bool,
        id: String,
        opened: &OpenedRecord,
    ) -> Result<Record> {
        let mut record = Record::new(collection, id, opened.subject_id.clone(), BTreeMap::new());
        for sf in &opened.stored.fields {
            // A stored field the schema does not know was not written by us.
            let schema = c.field(&sf.name).ok_or(Error::Integrity)?;
            if !projected(&sf.name) {
                continue;
            }
            // Only strings can be masked; a masked field of another type
            // is redacted. A redacted field is never decrypted.
            let level = match view.level(&sf.name) {
                Redaction::Masked if schema.field_type != FieldType::String => Redaction::Redacted,
                l => l,
            };
            if level == Redaction::Redacted {
                record.redacted.insert(sf.name.clone());
                continue;
            }
            // The value takes over the wiped plaintext buffer (no copy)
            // and wipes it in turn when dropped.
            let plaintext = self.open_stored_field(opened, collection, sf)?;
            let value = Value::from_plaintext(plaintext)?;
            if value.field_type() != schema.field_type {
                return Err(Error::Integrity);
            }
            // The unmasked value is wiped as it drops, at the end of
            // this iteration.
            let value = match (level, &value) {
                (Redaction::Masked, Value::String(s)) => {
                    record.masked.insert(sf.name.clone());
                    let mask = schema.mask.unwrap_or(Mask {
                        keep_first: 0,
                        keep_last: 0,
                    });
                    Value::String(mask.apply(s))
                }
                _ => value,
            };
            record.fields.insert(sf.name.clone(), value);
        }
        Ok(record)
    }

    /// Deletes one record; returns whether it existed.
    pub fn delete_record(&self, caller: &Caller, collection: &str, id: &str) -> Result<bool> {
        self.retrying(|| self.delete_record_once(caller, collection, id))
    }

    fn delete_record_once(&self, caller: &Caller, collection: &str, id: &str) -> Try<bool> {
        match self.stage_delete(caller, collection, id, Wait::Block) {
            Some(staged) => self.settle_try(staged),
            None => Some(Err(gave_up())),
        }
    }

    /// [`Engine::delete_record`] for the async request path (see
    /// [`Engine::put_records_async`]).
    pub async fn delete_record_async(
        self: &Arc<Self>,
        caller: &Caller,
        collection: &str,
        id: &str,
    ) -> Result<bool> {
        self.retrying_async(|| {
            let engine = Arc::clone(self);
            let (caller, collection, id) = (caller.clone(), collection.to_owned(), id.to_owned());
            async move {
                match engine.stage_delete(&caller, &collection, &id, Wait::Never) {
                    Some(staged) => engine.settle_async_try(staged).await,
                    None => on_blocking_pool(move || {
                        Ok(engine.delete_record_once(&caller, &collection, &id))
                    })
                    .await
                    .unwrap_or_else(|e| Some(Err(e))),
                }
            }
        })
        .await
    }

    /// A delete up to its commit; `None` if it would have to wait.
    fn stage_delete(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        wait: Wait,
    ) -> Option<Staged<bool>> {
        let mut ev = self.event(caller, Operation::Delete, Some(collection));
        // The id asked for, allowed or not.
        ev.records
            .push(to_hex(self.keyring().record_pseudonym(collection, id)));
        let result = self.delete_record_audited(caller, collection, id, &mut ev, wait);
        Staged::of(ev, result)
    }

    fn delete_record_audited(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        ev: &mut Event,
        wait: Wait,
    ) -> Result<Option<Prepared<bool>>> {
        self.policy()
            .authorize(caller, Operation::Delete, Some(collection))?;
        self.check_open()?;
        let c = self.data_collection(collection)?;
        validate_id("record id", id)?;
        let name = self.names.record(collection, id);
        let key = record_key(collection, &name);
        let Some((locks, previous)) = self.lock_writers(&[], std::slice::from_ref(&key), wait)?
        else {
            return Ok(None);
        };
        let indexed = c.fields.iter().any(|f| f.indexed);
        let Some(Some(old)) = previous.into_iter().next() else {
            // Index rows a put left while a delete of the record ran go
            // with the next delete of it.
            let mut ws = WriteSet::new();
            if indexed {
                self.unindex_record(&mut ws, &key)?;
            }
            return Ok(Some((ws, locks, false)));
        };
        let mut ws = WriteSet::new();
        // An expired record is deleted too, but was not there for the
        // caller (a get answered NOT_FOUND): so is the answer.
        let mut existed = true;
        if let Ok((stored, _)) = StoredRecord::decode(&old) {
            // A rotation of the owner on another server re-encrypts its
            // records: it must not write this one back.
            ws.expect_fences(self.fence_expectations([&stored.subject])?);
            existed = !self.expired(&c, &stored);
            // The event names the subject when its key still opens the
            // record's ids (not after an erasure).
            if let Ok(opened) = self.open_record(collection, &name, Some(id), &old) {
                ev.subjects
                    .push(to_hex(self.keyring().subject_pseudonym(&opened.subject_id)));
            }
            ws.delete(
                Table::SubjectRecords,
                subject_record_key(&stored.subject, &key),
            );
        }
        if indexed {
            self.unindex_record(&mut ws, &key)?;
        }
        ws.delete(Table::Records, key);
        Ok(Some((ws, locks, existed)))
    }

    // ---- blind indexes ----

    /// Into `ws`: the blind-index rows of the record at `record_key` of
    /// collection `c` become those of `fields` (see `index.rs`), under the
    /// current index key version (rows of any other version the record is
    /// listed under go). Nothing for a collection without indexed fields.
    /// The caller holds the record's writer locks: an index-key rotation
    /// swaps the keyring only while it holds every stripe (`reindex.rs`).
    fn index_record<'a>(
        &self,
        ws: &mut WriteSet,
        c: &Collection,
        record_key: &[u8],
        fields: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<()> {
        if !c.fields.iter().any(|f| f.indexed) {
            return Ok(());
        }
        let kr = self.keyring();
        let (version, key) = kr.current_index_key().ok_or(Error::Integrity)?;
        let new = index::tokens(key, version, self.region.as_str(), c, fields);
        let old = self.indexed_tokens(record_key)?;
        index::replace(ws, record_key, &old, version, &new);
        Ok(())
    }

    /// The blind-index tokens the record at `record_key` is listed under.
    fn indexed_tokens(&self, record_key: &[u8]) -> Result<Vec<index::Token>> {
        let prefix = index::reverse_prefix(record_key);
        let rows = self.store.scan_prefix(Table::Index, &prefix)?;
        index::listed_tokens(&rows, &prefix)
    }

    /// Into `ws`: the removal of every blind-index row of the record at
    /// `record_key` (deleted or erased). Returns the keys of the rows
    /// removed (to compact them away after an erasure or a purge).
    fn unindex_record(&self, ws: &mut WriteSet, record_key: &[u8]) -> Result<Vec<Vec<u8>>> {
        let old = self.indexed_tokens(record_key)?;
        index::replace(ws, record_key, &old, 0, &[]);
        Ok(index::row_keys(record_key, &old))
    }

    /// Compacts each of `keys` of `table` (logged, not fatal), so that
    /// deleted rows leave the table files.
    fn compact_keys(&self, table: Table, keys: &[Vec<u8>]) {
        for k in keys {
            if let Err(e) = self.store.compact_range(table, k, k) {
                tracing::warn!(error = %e, table = table.name(), "compaction failed");
            }
        }
    }

    // ---- audit ----

    /// A new audit event for `caller` doing `op`.
    fn event(&self, caller: &Caller, op: Operation, collection: Option<&str>) -> Event {
        let mut ev = Event::of(caller, op.name());
        ev.collection = collection.and_then(|c| self.shown_collections(std::iter::once(c)));
        ev
    }

    /// What an event says of the collections a request names: each name,
    /// comma-separated in request order (names are `[a-z0-9_-]`), where
    /// only collections that exist are named. A mistyped name the caller
    /// sent may be anything (an e-mail address), and the log is forever.
    fn shown_collections<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<String> {
        let known = self.read_collections();
        // Few distinct names (each known collection, and one for all
        // unknown ones): a scan finds the repeats.
        let mut shown: Vec<&str> = Vec::new();
        for c in names {
            let c = if known.contains_key(c) {
                c
            } else {
                "<unknown collection>"
            };
            if !shown.contains(&c) {
                shown.push(c);
            }
        }
        (!shown.is_empty()).then(|| shown.join(","))
    }

    /// Authorises `op`, recording a refusal as an audit event named
    /// `operation`.
    pub(crate) fn authorize_audited(
        &self,
        caller: &Caller,
        op: Operation,
        collection: Option<&str>,
        operation: &str,
    ) -> Result<()> {
        let result = self.policy().authorize(caller, op, collection);
        if result.is_err() {
            let mut ev = self.event(caller, op, collection);
            ev.operation = operation.to_owned();
            return self.audit_failure(ev, result);
        }
        result
    }

    /// Records a refused or failed request (its event was not committed).
    /// If even that event cannot be written, the error stands: the request
    /// fails either way, and no data left.
    fn audit_failure<T>(&self, ev: Event, result: Result<T>) -> Result<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => self.settle(Staged::failed(ev, e)),
        }
    }

    /// Commits a staged request's batch and event (blocking the thread),
    /// then releases its locks: its outcome, or the commit's error.
    fn settle<T>(&self, staged: Staged<T>) -> Result<T> {
        self.settle_try(staged).unwrap_or(Err(Error::Conflict))
    }

    /// [`Engine::settle`], `None` when the commit failed on a condition.
    fn settle_try<T>(&self, staged: Staged<T>) -> Try<T> {
        let Staged {
            ws,
            ev,
            outcome,
            locks,
        } = staged;
        let written = self.commit(ws, ev);
        drop(locks);
        self.after_commit(&written);
        tried(outcome, written)
    }

    /// [`Engine::settle`] awaiting the commit without holding a thread.
    async fn settle_async<T>(&self, staged: Staged<T>) -> Result<T> {
        self.settle_async_try(staged)
            .await
            .unwrap_or(Err(Error::Conflict))
    }

    /// [`Engine::settle_async`], `None` when the commit failed on a
    /// condition.
    async fn settle_async_try<T>(&self, staged: Staged<T>) -> Try<T> {
        let Staged {
            ws,
            ev,
            outcome,
            locks,
        } = staged;
        // The locks go with the batch: the audit writer drops them once it
        // is written, so they cover the write even if this future is
        // dropped, and they are not held while a checkpoint is signed.
        let hold = (!locks.is_empty()).then(|| Box::new(locks) as crate::audit::Hold);
        let written = self.commit_async(ws, ev, hold).await;
        self.after_commit(&written);
        tried(outcome, written)
    }

    /// A commit that failed on a condition may have met a fence another
    /// server moved on: the next write reads the epochs again.
    fn after_commit(&self, written: &Result<u64>) {
        if matches!(written, Err(Error::Conflict)) {
            self.forget_fences();
        }
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Commits `ws` with its audit event, and signs a checkpoint every
    /// [`CheckpointOptions::every_events`] events.
    fn commit(&self, ws: WriteSet, ev: Event) -> Result<u64> {
        let index = self.audit.commit(ws, ev)?;
        if self.checkpoint_due(index) {
            checkpoint_signed(self.checkpoint());
        }
        Ok(index)
    }

    /// [`Engine::commit`] for the async request path: awaits the group
    /// commit without holding a thread; a checkpoint due is signed and
    /// stored on the blocking pool (its write is synced), awaited.
    async fn commit_async(
        &self,
        ws: WriteSet,
        ev: Event,
        hold: Option<crate::audit::Hold>,
    ) -> Result<u64> {
        let index = self.audit.commit_async_holding(ws, ev, hold).await?;
        if self.checkpoint_due(index) {
            let audit = Arc::clone(&self.audit);
            let (origin, key) = (self.audit_origin.clone(), self.audit_signer.clone());
            let signed = on_blocking_pool(move || audit.checkpoint(&origin, &key)).await;
            if signed.is_ok() {
                self.monitor.checkpointed(self.audit.size());
            }
            checkpoint_signed(signed);
        }
        Ok(index)
    }

    /// Whether a checkpoint is due after event `index`.
    fn checkpoint_due(&self, index: u64) -> bool {
        let every = self.checkpoints.every_events;
        every > 0 && (index + 1).is_multiple_of(every)
    }

    /// Appends an event with no changes (a request the service layer
    /// records itself); counts towards checkpoints like any other.
    pub fn append_event(&self, ev: Event) -> Result<u64> {
        self.commit(WriteSet::new(), ev)
    }

    /// [`Engine::append_event`] awaiting the commit without holding a
    /// thread.
    pub async fn append_event_async(&self, ev: Event) -> Result<u64> {
        self.commit_async(WriteSet::new(), ev, None).await
    }

    /// Records a custody or admin request whose outcome is known: done
    /// (its effect is in the keyring file, not in a store batch) or failed
    /// after authorisation. A failure to record is logged; the request's
    /// own result stands.
    pub(crate) fn record<T>(
        &self,
        caller: &Caller,
        operation: &str,
        detail: Option<String>,
        result: &Result<T>,
    ) {
        let ev = Event::outcome(caller, operation, detail, result);
        if let Err(e) = self.commit(WriteSet::new(), ev) {
            tracing::error!(error = %e, operation, "audit event could not be written");
        }
    }

    /// Runs a custody or erasure request: authorised (a refusal recorded),
    /// then `work`, whose failure is recorded too (its success records its
    /// own event, with what it did).
    pub(crate) fn audited<T>(
        &self,
        caller: &Caller,
        op: Operation,
        operation: &str,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.authorize_audited(caller, op, None, operation)?;
        let result = work();
        if result.is_err() {
            self.record(caller, operation, None, &result);
        }
        result
    }

    /// A copy of the unseal key this engine saves the keyring under (for
    /// a rekey that must fall back to it when the HSM holds it).
    pub(crate) fn unseal_key(&self) -> Key256 {
        self.keyring_file.unseal_key.clone()
    }

    /// The origin line of this vault's checkpoints: region and keyring id.
    pub fn audit_origin(&self) -> String {
        self.audit_origin.clone()
    }

    /// The C2SP verifier key of the audit signing key.
    pub fn audit_verifier_key(&self) -> String {
        crate::audit::checkpoint::verifier_key(&self.audit_origin, &self.audit_signer)
    }

    /// The names of the witnesses whose cosignatures the vault takes.
    pub fn witness_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.witnesses.iter().map(|w| w.name().to_owned()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Takes the cosignatures of configured witnesses in `note` (a
    /// checkpoint this vault stored, with their signature lines), to serve
    /// with the checkpoint from now on. Returns its tree size and each
    /// cosignature taken (witness name, time).
    pub fn add_cosignatures(&self, note: &str) -> Result<(u64, Vec<(String, u64)>)> {
        if self.witnesses.is_empty() {
            return Err(Error::FailedPrecondition(
                "this vault takes no witness cosignatures: list the witnesses' keys in \
                 [audit] witnesses"
                    .into(),
            ));
        }
        let (size, taken) = self
            .audit
            .add_cosignatures(note, &self.witnesses, unix_secs())?;
        for (name, _) in &taken {
            self.monitor.cosigned(name);
        }
        Ok((size, taken))
    }

    /// A witness's signed refusal of a checkpoint: checked against the
    /// configured witnesses' keys, the clock (within ten minutes) and this
    /// vault's origin, and taken once, then raised as a critical alert on
    /// behalf of `caller`.
    pub fn witness_refused(
        &self,
        caller: &Caller,
        witness: &str,
        refusal: &WitnessRefusal,
    ) -> Result<()> {
        const SLACK_SECS: u64 = 600;
        let WitnessRefusal {
            time,
            reason,
            checkpoint,
            signature,
        } = refusal;
        if reason.len() > 512 || reason.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "a refusal's reason is one line of at most 512 bytes".into(),
            ));
        }
        let Some((size, _)) = crate::audit::checkpoint::parse(checkpoint.as_bytes()) else {
            return Err(Error::InvalidArgument(
                "the refused checkpoint is not a checkpoint".into(),
            ));
        };
        let message =
            format!("vault-witness-refusal/v1\ntime {time}\nreason {reason}\n{checkpoint}");
        if !self
            .witnesses
            .iter()
            .any(|w| w.name() == witness && w.verifies(message.as_bytes(), signature))
        {
            return Err(Error::PermissionDenied(
                "the refusal is not signed by a witness this vault takes ([audit] witnesses)"
                    .into(),
            ));
        }
        if unix_secs().abs_diff(*time) > SLACK_SECS {
            return Err(Error::InvalidArgument(
                "the refusal is dated more than ten minutes from this server's clock".into(),
            ));
        }
        if checkpoint.split('\n').next() != Some(self.audit_origin.as_str()) {
            return Err(Error::InvalidArgument(
                "the refused checkpoint is not of this vault's log (another origin)".into(),
            ));
        }
        if !self.monitor.first_refusal(signature) {
            return Err(Error::AlreadyExists(
                "this refusal was reported already".into(),
            ));
        }
        self.monitor.witness_refused(
            caller,
            format!("witness {witness} refused checkpoint of size {size}: {reason}"),
        );
        Ok(())
    }

    /// A signed checkpoint of the audit log now.
    pub fn checkpoint(&self) -> Result<String> {
        let note = self
            .audit
            .checkpoint(&self.audit_origin, &self.audit_signer)?;
        self.monitor.checkpointed(self.audit.size());
        Ok(note)
    }

    /// Takes the writers' (shared) locks for a write of `keys` by
    /// `subjects`: the stripes of the new subjects and of the records'
    /// current owners, so neither subject's rotation or erasure runs
    /// meanwhile. Returns the guards and the records as they are under them.
    /// With [`Wait::Never`], `None` if a stripe is held or wanted
    /// exclusively (nothing is held then).
    #[allow(clippy::type_complexity)]
    fn lock_writers(
        &self,
        subjects: &[SubjectName],
        keys: &[Vec<u8>],
        wait: Wait,
    ) -> Result<Option<(Vec<SharedGuard>, Vec<Option<Vec<u8>>>)>> {
        let owner = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .and_then(|b| StoredRecord::decode(b).ok())
                .map(|(r, _)| r.subject)
        };
        let mut also: Vec<SubjectName> = Vec::new();
        loop {
            let mut stripes: Vec<usize> = subjects.iter().chain(also.iter()).map(stripe).collect();
            stripes.sort_unstable();
            stripes.dedup();
            let Some(guards) = self.lock_stripes(&stripes, wait) else {
                return Ok(None);
            };
            let current = self.read_rows(Table::Records, keys)?;
            let owners: Vec<SubjectName> = current.iter().filter_map(owner).collect();
            if owners
                .iter()
                .all(|o| stripes.binary_search(&stripe(o)).is_ok())
            {
                return Ok(Some((guards, current)));
            }
            // A record belongs to a subject whose lock we do not hold:
            // take it too, and look again (the owner may change meanwhile).
            drop(guards);
            also = owners;
        }
    }

    /// The rows of `keys` in `table` (as [`Store::multi_get`]); a single
    /// key is a point read, which costs RocksDB less than a multi-get.
    fn read_rows(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        match keys {
            [key] => Ok(vec![self.store.get(table, key)?]),
            _ => self.store.multi_get(table, keys),
        }
    }

    /// Shared locks on sorted, distinct stripes (taken in that order); with
    /// [`Wait::Never`], `None` unless each is free now.
    fn lock_stripes(&self, stripes: &[usize], wait: Wait) -> Option<Vec<SharedGuard>> {
        stripes
            .iter()
            .map(|&i| match wait {
                Wait::Block => Some(self.subject_locks[i].shared()),
                Wait::Never => self.subject_locks[i].try_shared(),
            })
            .collect()
    }

    // ---- subject keys ----

    /// The subject's current key, made (and durably stored) on first use.
    /// The caller holds the subject's lock. With [`Wait::Never`], `None`
    /// if the key has to be made (or looked for again under
    /// `create_lock`).
    fn current_subject_key(
        &self,
        subject: &SubjectName,
        wait: Wait,
    ) -> Result<Option<Arc<SubjectKeys>>> {
        if let Some(found) = self.latest_stored_subject_key(subject)? {
            match self.cached_or_unwrap(subject, found) {
                // Erased, or read just before an erasure in its bucket
                // re-wrapped it and dropped the epoch: read again under
                // the lock erasures hold.
                Err(Error::SubjectErased | Error::Integrity) => {}
                other => return other.map(Some),
            }
        }
        if wait == Wait::Never {
            return Ok(None);
        }
        let generation = self.keyring().generation();
        match self.make_subject_key(subject) {
            // Made under a keyring another server replaced (an erasure, a
            // rotation): take the stored one up now (unless the background
            // sync just did) and try once more, rather than fail until the
            // next sync.
            Err(Error::Conflict)
                if self.is_shared()
                    && (self.follow_keyring()? || self.keyring().generation() != generation) =>
            {
                self.make_subject_key(subject).map(Some)
            }
            made => made.map(Some),
        }
    }

    /// The subject's current key under `create_lock`: the stored one, or a
    /// new one stored now (`Error::Conflict` if the stored keyring changed
    /// meanwhile on a shared store and no key of the subject is stored).
    fn make_subject_key(&self, subject: &SubjectName) -> Result<Arc<SubjectKeys>> {
        let _guard = lock(&self.create_lock);
        let keyring = self.keyring();
        let latest = self.latest_stored_subject_key(subject)?;
        let erased = keyring.erased_through(subject);
        if let Some(found) = latest.clone() {
            if erased.is_none_or(|e| found.0 > e) {
                return self.cached_or_unwrap(subject, found);
            }
        }
        // A new subject, or one whose keys were erased (and perhaps brought
        // back by a restored backup): a fresh key, numbered after every
        // version ever used, so no erased version is reused.
        let version = latest
            .map_or(0, |l| l.0)
            .max(erased.unwrap_or(0))
            .checked_add(1)
            .ok_or(Error::Integrity)?;
        let key = Key256::random();
        let wrapped = wrap_subject_key(&keyring, subject, version, &key)?;
        let root_version = wrapping_version(&wrapped)?;
        let mut ws = WriteSet::new();
        let row = subject_key_id(self.names.bucket(subject), subject, version);
        if self.is_shared() {
            // Another server may make this subject's key at the same time:
            // one of the two keys is stored, and both servers use it. And
            // it is wrapped under this keyring only if that is still the
            // stored one: an erasure through another server re-wraps its
            // bucket only after its keyring save, which waits for this
            // write (or makes it fail).
            ws.expect(Table::SubjectKeys, row.clone(), None);
            ws.expect_keyring(keyring.generation());
        }
        ws.put(Table::SubjectKeys, row, wrapped);
        match self
            .wraps
            .commit(root_version, 1, ws, |ws| self.store.write(ws))
        {
            Ok(()) => {}
            Err(Error::Conflict) => {
                let Some(found) = self.latest_stored_subject_key(subject)? else {
                    return Err(Error::Conflict);
                };
                return match self.cached_or_unwrap(subject, found) {
                    // Wrapped under a root key this server has not taken
                    // up yet: it will within a second.
                    Err(Error::Integrity) => Err(Error::Conflict),
                    other => other,
                };
            }
            Err(e) => return Err(e),
        }
        let keys = Arc::new(SubjectKeys::new(version, key));
        self.cache.insert(subject, Arc::clone(&keys));
        Ok(keys)
    }

    fn latest_stored_subject_key(&self, subject: &SubjectName) -> Result<Option<(u32, Vec<u8>)>> {
        let prefix = subject_key_prefix(self.names.bucket(subject), subject);
        let Some((k, v)) = self.store.last_with_prefix(Table::SubjectKeys, &prefix)? else {
            return Ok(None);
        };
        let version: [u8; 4] = k[prefix.len()..].try_into().map_err(|_| Error::Integrity)?;
        Ok(Some((u32::from_be_bytes(version), v)))
    }

    fn cached_or_unwrap(
        &self,
        subject: &SubjectName,
        (version, wrapped): (u32, Vec<u8>),
    ) -> Result<Arc<SubjectKeys>> {
        if let Some(k) = self.cache.get(subject, version) {
            return Ok(k);
        }
        let key = unwrap_subject_key(&self.keyring(), subject, version, &wrapped)?;
        let keys = Arc::new(SubjectKeys::new(version, key));
        self.cache.insert(subject, Arc::clone(&keys));
        // An erasure may have finished between our unwrap and the insert;
        // it evicted the subject before we inserted. Look again, with the
        // keyring as of now, so no erased key stays cached.
        if self
            .keyring()
            .erased_through(subject)
            .is_some_and(|e| version <= e)
        {
            self.cache.evict_subject(subject);
            return Err(Error::SubjectErased);
        }
        Ok(keys)
    }

    /// A subject key by version, for decryption. A ciphertext that names a
    /// key version that does not exist is an integrity failure.
    fn subject_key(&self, subject: &SubjectName, version: u32) -> Result<Arc<SubjectKeys>> {
        if let Some(k) = self.cache.get(subject, version) {
            return Ok(k);
        }
        let row = subject_key_id(self.names.bucket(subject), subject, version);
        let wrapped = self
            .store
            .get(Table::SubjectKeys, &row)?
            .ok_or(Error::Integrity)?;
        match self.cached_or_unwrap(subject, (version, wrapped.clone())) {
            // The re-wrap job or an erasure in the subject's bucket may have
            // re-wrapped the row (and the old root version or bucket epoch
            // gone) between our read and the unwrap: read it once more. A
            // real failure fails twice.
            Err(Error::Integrity) => match self.store.get(Table::SubjectKeys, &row)? {
                Some(again) if again != wrapped => self.cached_or_unwrap(subject, (version, again)),
                _ => Err(Error::Integrity),
            },
            other => other,
        }
    }
}

/// A record's ids and names, as a write seals them.
struct Ids<'a> {
    collection: &'a str,
    id: &'a str,
    name: &'a RecordName,
    subject_id: &'a str,
    subject: &'a SubjectName,
}

/// Whether engine work may block its thread for long: wait for a subject
/// lock that a rotation or erasure holds, or store a new subject key (a
/// synced write under `create_lock`). Not on the async runtime: there such
/// work gives up, and the request moves to the blocking pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Block,
    Never,
}

/// What a request prepared for its commit: its batch, the subjects' locks
/// (held until the batch is durable) and what it returns then.
type Prepared<T> = (WriteSet, Vec<SharedGuard>, T);

/// A request's work up to its audit commit: the batch and event to commit
/// in one synced write, what the request returns once they are durable
/// (or the error it failed with, its event then recording the refusal and
/// the batch empty), and the locks held until then. Prepared by sync code
/// (`stage_*`), committed by [`Engine::settle`] or [`Engine::settle_async`].
struct Staged<T> {
    ws: WriteSet,
    ev: Event,
    outcome: Result<T>,
    locks: Vec<SharedGuard>,
}

impl<T> Staged<T> {
    /// A request refused or failed before its commit: its event records
    /// the refusal, and nothing else is written.
    fn failed(ev: Event, e: Error) -> Staged<T> {
        Staged {
            ws: WriteSet::new(),
            ev: ev.refused(&e),
            outcome: Err(e),
            locks: Vec::new(),
        }
    }

    /// A request as its `*_audited` step prepared it (`Ok(None)`: it would
    /// have to wait, and nothing was done).
    fn of(ev: Event, prepared: Result<Option<Prepared<T>>>) -> Option<Staged<T>> {
        match prepared {
            Ok(Some((ws, locks, value))) => Some(Staged {
                ws,
                ev,
                outcome: Ok(value),
                locks,
            }),
            Ok(None) => None,
            Err(e) => Some(Staged::failed(ev, e)),
        }
    }
}

/// A try of a write: `None` when its commit failed on a condition
/// (`Error::Conflict`; the request was going to succeed): nothing was
/// written, not its event either, and it may be tried again.
type Try<T> = Option<Result<T>>;

/// [`settled`], or `None` for a commit that failed on a condition.
fn tried<T>(outcome: Result<T>, written: Result<u64>) -> Try<T> {
    match (&outcome, &written) {
        (Ok(_), Err(Error::Conflict)) => None,
        _ => Some(settled(outcome, written)),
    }
}

/// A staged request's result once its commit returned: its outcome if the
/// event was written; else the commit's error (for a request that was
/// going to succeed: it fails closed) or its own (for a refused request,
/// whose unwritten event is logged).
fn settled<T>(outcome: Result<T>, written: Result<u64>) -> Result<T> {
    match (outcome, written) {
        (Ok(v), Ok(_)) => Ok(v),
        (Ok(_), Err(w)) => Err(w),
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(w)) => {
            tracing::error!(error = %w, "audit event of a failed request could not be written");
            Err(e)
        }
    }
}

/// Blocking work ([`Wait::Block`]) never gives up; should it, the request
/// fails (and records its failure).
fn gave_up() -> Error {
    Error::Storage("blocking engine work gave up waiting".into())
}

/// Logs a checkpoint that could not be signed (or stored).
fn checkpoint_signed(signed: Result<String>) {
    if let Err(e) = signed {
        tracing::error!(error = %e, "could not sign an audit checkpoint");
    }
}

/// Runs blocking engine work on the blocking pool, from the async path.
async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "engine task failed");
        Err(Error::Storage("an engine task failed".into()))
    })
}

/// Lower-case hex of `bytes`, as `hex::encode` gives it, without its
/// char-at-a-time iterator (pseudonyms in every event, ids in AADs).
fn to_hex(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    let mut out = vec![0u8; bytes.len() * 2];
    // The buffer is twice the input's length: encoding cannot fail, and
    // hex digits are UTF-8.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The one record of a single-record read (not found if missing).
fn the_one(found: Result<(Vec<Record>, Vec<String>)>, collection: &str) -> Result<Record> {
    found?
        .0
        .pop()
        .ok_or_else(|| Error::NotFound(format!("record in collection {collection}")))
}

/// A stored record whose ids and tag checked out, with its subject key.
struct OpenedRecord {
    stored: StoredRecord,
    sk: Arc<SubjectKeys>,
    /// The clear subject id (from the ids envelope).
    subject_id: String,
    /// The clear record id (from the ids envelope).
    id: String,
}

/// The lock stripe of a subject (its storage name is already a keyed hash).
fn stripe(subject: &SubjectName) -> usize {
    (name_number(subject) % SUBJECT_STRIPES as u64) as usize
}

/// The first 8 bytes of a subject's storage name, as a number (stripes and
/// fences spread subjects by it).
fn name_number(subject: &SubjectName) -> u64 {
    u64::from_be_bytes([
        subject[0], subject[1], subject[2], subject[3], subject[4], subject[5], subject[6],
        subject[7],
    ])
}

/// Refuses a data folder of another format than this build's (one that
/// holds data: a new folder has no format yet).
pub(crate) fn check_format(store: &dyn Store) -> Result<()> {
    let found =
        match store.get(Table::Meta, META_FORMAT)? {
            None => 1,
            Some(v) => u32::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                Error::Storage("the data folder's format marker is malformed".into())
            })?),
        };
    if found != DATA_FOLDER_FORMAT {
        return Err(Error::Config(format!(
            "the data folder is of format {found}; this build reads format {DATA_FOLDER_FORMAT} \
             only (record and subject ids are no longer stored in clear, and erasure destroys \
             keys): start from a new data folder and keyring (operator init); there is no \
             migration"
        )));
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks the keyring's generation against the highest the data folder
/// has seen, and records a newer one. An older keyring is refused, or,
/// when custodians accept it, taken as the folder's new mark: then the
/// generations are returned (keyring, folder) for the unseal's event.
fn check_keyring_generation(
    store: &dyn Store,
    keyring: &Keyring,
    accept_rollback: bool,
) -> Result<Option<(u64, u64)>> {
    let ours = keyring.generation();
    let seen = match store.get(Table::Meta, META_KEYRING_GENERATION)? {
        None => None,
        Some(v) => Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
            |_| Error::Storage("the data folder's keyring generation is malformed".into()),
        )?)),
    };
    match seen {
        Some(folder) if ours < folder => {
            if !accept_rollback {
                return Err(crate::keys::KeyringError::RolledBack {
                    keyring: ours,
                    folder,
                }
                .into());
            }
            tracing::warn!(
                keyring = ours,
                folder,
                "an older keyring accepted by the custodians (keyring rollback)"
            );
            write_keyring_generation(store, ours)?;
            Ok(Some((ours, folder)))
        }
        Some(folder) if ours == folder => Ok(None),
        _ => {
            write_keyring_generation(store, ours)?;
            Ok(None)
        }
    }
}

fn write_keyring_generation(store: &dyn Store, generation: u64) -> Result<()> {
    let mut ws = WriteSet::new();
    ws.put(
        Table::Meta,
        META_KEYRING_GENERATION.to_vec(),
        generation.to_be_bytes().to_vec(),
    );
    store.write(ws)
}

#[cfg(test)]
mod tests;
