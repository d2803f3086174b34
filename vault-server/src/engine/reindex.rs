//! Blind-index key rotation and the rebuild it starts: a new index-key
//! version becomes current, and a background job makes every blind-index
//! row again under it, in batches, at a bounded pace; when the walk is
//! done, the older version is destroyed in the keyring.
//!
//! The walk follows the reverse rows (`'r' ‖ record key ‖ token`, see
//! `index.rs`) in key order: every record of a collection with an indexed
//! field that holds an indexed value has them, and so do rows a record
//! left behind when it went (a put that raced a delete). For each record
//! of a batch, under the exclusive locks of its owners' stripes (no put,
//! delete, subject-key rotation or erasure of the record runs meanwhile),
//! the job opens the record as a read does (ids envelope and record tag
//! checked), decrypts its indexed fields only, computes their tokens under
//! the current version and replaces the record's rows. A batch's rows and
//! the job's cursor are one atomic write, so after a crash the job resumes
//! just after the last record it committed. A record whose rows are all of
//! the current version already (written since the rotation) is passed
//! without a decryption. Records it cannot read (an erased subject's, from
//! a restored backup; a damaged one) and rows whose record is gone lose
//! their rows of older versions and gain none; they are counted, never
//! named (no id, token or value is logged).
//!
//! Writes during the rebuild make rows under the current version only:
//! they take the keyring for their tokens under their stripe locks, and the
//! rotation swaps the keyring while it holds every stripe exclusively, so
//! no write whose tokens were made under the old version commits after it.
//! Searches meanwhile look under every live version (`search.rs`). A
//! rotation is refused while an older version is live: at most two are.
//!
//! When the walk reaches the end no row of an older version is left: the
//! older versions are destroyed in the keyring (saved before it takes
//! effect), then the finished job record is written with the vault's
//! `reindex_finished` audit event (counts only) in one atomic write, and
//! the index table is compacted, so the replaced rows leave its files. A
//! stop in between finds the cursor at the end, and the next step
//! finishes.
//!
//! Persisted job (Meta `reindex_job`, integers big-endian):
//!
//! ```text
//!  0     1        5          6          14          22        30           38         46      50
//!  +-----+--------+----------+----------+-----------+---------+------------+----------+-------+--------+
//!  | ver | target | finished | examined | reindexed | skipped | unreadable | total at | u32 c | cursor |
//!  | =1  | u32    | u8 0/1   | u64      | u64       | u64     | u64        | start u64|       | (c B)  |
//!  +-----+--------+----------+----------+-----------+---------+------------+----------+-------+--------+
//! ```
//! `cursor` is the first `Table::Index` key not yet examined (the job
//! starts at `'r'`, the first reverse row). Unknown versions, a finished
//! byte other than 0 or 1, a cursor length that disagrees with the bytes
//! left, and truncated records are refused with an error; a record that
//! cannot be read at open makes the job start over (rebuilding is
//! idempotent).

use std::sync::Mutex;

use super::index::{self, Token};
use super::shared::HeldFences;
use super::stripes::ExclusiveGuard;
use super::{lock, stripe, Engine, SubjectName, Value};
use crate::audit::Event;
use crate::crypto::Key256;
use crate::keys::Keyring;
use crate::policy::{Caller, Operation};
use crate::storage::{split_record_key, Store, StoredRecord, Table, WriteSet};
use crate::{Error, Result};

const JOB_KEY: &[u8] = b"reindex_job";
const JOB_V1: u8 = 1;
/// The fixed part of a job record, before the cursor.
const JOB_HEADER: usize = 50;

/// The most rows of a batch on a shared store (see `reindex_step`).
const SHARED_BATCH: usize = 256;

/// Pace of the blind-index rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReindexOptions {
    /// Index rows read per batch (one atomic write each); a batch holds at
    /// most this many records.
    pub batch_size: usize,
    /// Most index rows examined per second; 0 for no limit.
    pub rows_per_second: u64,
}

impl Default for ReindexOptions {
    fn default() -> Self {
        ReindexOptions {
            batch_size: 100,
            rows_per_second: 5_000,
        }
    }
}

/// Where the blind-index rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReindexProgress {
    /// The index key version rows are rebuilt under (the current one).
    pub target_version: u32,
    /// Whether every row is of the target version and the older version
    /// destroyed.
    pub finished: bool,
    /// Records examined by this job.
    pub examined: u64,
    /// Records whose rows this job made again under the target version.
    pub reindexed: u64,
    /// Records of erased subjects (from a restored backup) and rows whose
    /// record is gone: their older rows removed, none made.
    pub skipped: u64,
    /// Records that could not be read (damaged: their older rows removed,
    /// none made) and index rows that name no record (left as they are);
    /// logged without ids.
    pub unreadable: u64,
    /// Records listed in the index when the job started.
    pub total_at_start: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    progress: ReindexProgress,
    cursor: Vec<u8>,
}

impl Job {
    fn encode(&self) -> Vec<u8> {
        let p = &self.progress;
        let mut b = Vec::with_capacity(JOB_HEADER + self.cursor.len());
        b.push(JOB_V1);
        b.extend_from_slice(&p.target_version.to_be_bytes());
        b.push(u8::from(p.finished));
        for n in [
            p.examined,
            p.reindexed,
            p.skipped,
            p.unreadable,
            p.total_at_start,
        ] {
            b.extend_from_slice(&n.to_be_bytes());
        }
        // Index keys are short (a collection name, a storage name and a
        // token); a u32 holds any key a store could give.
        b.extend_from_slice(&u32::try_from(self.cursor.len()).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(&self.cursor);
        b
    }

    fn decode(b: &[u8]) -> Result<Job> {
        let bad = || Error::Storage("malformed blind-index rebuild job record".into());
        let (&ver, rest) = b.split_first().ok_or_else(bad)?;
        if ver != JOB_V1 {
            return Err(Error::Storage(format!(
                "blind-index rebuild job record version {ver} is not supported"
            )));
        }
        let (target, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let (&finished, mut rest) = rest.split_first().ok_or_else(bad)?;
        let mut n = [0u64; 5];
        for slot in &mut n {
            let (v, r) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
            *slot = u64::from_be_bytes(*v);
            rest = r;
        }
        let (len, cursor) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        if u32::try_from(cursor.len()).ok() != Some(u32::from_be_bytes(*len)) || finished > 1 {
            return Err(bad());
        }
        Ok(Job {
            progress: ReindexProgress {
                target_version: u32::from_be_bytes(*target),
                finished: finished == 1,
                examined: n[0],
                reindexed: n[1],
                skipped: n[2],
                unreadable: n[3],
                total_at_start: n[4],
            },
            cursor: cursor.to_vec(),
        })
    }
}

/// The job record decoder, for the fuzz target: `Some` with the record
/// encoded again when `bytes` decode (the target checks it is the same
/// bytes), `None` when they are refused. Only in test and fuzzing builds.
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub(crate) fn reencode_reindex_job_record(bytes: &[u8]) -> Option<Vec<u8>> {
    Job::decode(bytes).ok().map(|job| job.encode())
}

/// A well-formed job record (a cursor part way through the reverse
/// rows), the fuzz target's seed.
#[cfg(test)]
pub(crate) fn reindex_job_record_seed() -> Vec<u8> {
    Job {
        progress: ReindexProgress {
            target_version: 2,
            finished: false,
            examined: 57,
            reindexed: 54,
            skipped: 2,
            unreadable: 1,
            total_at_start: 120,
        },
        cursor: index::after_record(&crate::storage::record_key("people", &[1; 32])),
    }
    .encode()
}

/// The job's state in memory: the last committed job record, and the lock
/// that runs one step at a time. `Debug` omits the cursor (it names a
/// record by its storage name).
pub(super) struct JobState {
    job: Mutex<Option<Job>>,
    step: Mutex<()>,
    /// A test's pause in the next batch, once its records are read under
    /// their locks.
    #[cfg(test)]
    pub(super) pause: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let progress = lock(&self.job).as_ref().map(|j| j.progress);
        f.debug_struct("JobState")
            .field("progress", &progress)
            .finish_non_exhaustive()
    }
}

impl JobState {
    pub(super) fn load(store: &dyn Store) -> Result<Self> {
        // Rebuilding is idempotent.
        let job =
            super::rewrap::load_job_record(store, JOB_KEY, Job::decode, "blind-index rebuild")?;
        Ok(JobState {
            job: Mutex::new(job),
            step: Mutex::new(()),
            #[cfg(test)]
            pause: Mutex::new(None),
        })
    }
}

/// What the rebuild does with one record.
enum Rebuilt {
    /// Its tokens under the target version.
    Tokens(Vec<Token>),
    /// An erased subject's record, or rows without a record.
    Skipped,
}

impl Engine {
    /// Makes a new blind-index key version current (saved in the keyring
    /// first) and starts the job that rebuilds every index row under it.
    /// Refused while an earlier rebuild still runs.
    pub fn rotate_index_key(&self, caller: &Caller) -> Result<u32> {
        self.audited(caller, Operation::Custody, "rotate_index_key", || {
            self.rotate_index_key_authorized(caller)
        })
    }

    fn rotate_index_key_authorized(&self, caller: &Caller) -> Result<u32> {
        let refuse_while_rebuilding = |kr: &Keyring| {
            let older = kr.older_index_versions();
            if older.is_empty() {
                return Ok(());
            }
            Err(Error::FailedPrecondition(format!(
                "the blind index is still being rebuilt under index key version {} (version {} \
                 is still live); rotate again once the rebuild is finished (vaultctl operator \
                 reindex-status --wait)",
                kr.current_index_version(),
                older
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        };
        // Refused at once, before any writer waits.
        refuse_while_rebuilding(&self.keyring())?;
        // Every stripe, ascending, then custody: a write makes its tokens
        // under its stripe locks and holds them until it is durable, so once
        // the keyring is swapped under all of them no write with tokens of
        // the old version can still commit.
        let writers: Vec<ExclusiveGuard<'_>> =
            self.subject_locks.iter().map(|s| s.exclusive()).collect();
        let custody = lock(&self.custody_lock);
        self.check_open()?;
        // And the index key's fence: no other server's write of blind-index
        // rows made under the keyring before this one lands after it.
        let index_fence = self.hold_index_fence()?;
        let kr = self.keyring();
        refuse_while_rebuilding(&kr)?;
        let mut kr = Keyring::clone(&kr);
        let version = kr.rotate_index().map_err(super::custody::custody_error)?;
        self.replace_keyring(kr)?;
        if self.is_shared() {
            // Moved on at once, held or not (a hold lost with its session
            // would not move it on when let go): a write made under the
            // keyring before this one fails from now on.
            let mut ws = WriteSet::new();
            ws.bump_fences([crate::storage::INDEX_FENCE], None);
            if let Err(e) = self.store.write(ws) {
                tracing::error!(error = %e, "could not move the index key's fence on after its rotation");
            }
        }
        drop(index_fence);
        drop(writers);
        tracing::info!(version, principal = %caller.principal.name, "blind-index key rotated");
        self.record(
            caller,
            "rotate_index_key",
            Some(format!(
                "version {version}; keyring generation {}",
                self.keyring().generation()
            )),
            &Ok(()),
        );
        drop(custody);
        // The background thread runs the rebuild.
        self.rewrap.wake();
        Ok(version)
    }

    /// Where the blind-index rebuild stands.
    pub fn reindex_status(&self, caller: &Caller) -> Result<ReindexProgress> {
        self.authorize_audited(caller, Operation::Custody, None, "reindex_status")?;
        self.record(caller, "reindex_status", None, &Ok(()));
        Ok(self.reindex_progress())
    }

    /// [`Engine::reindex_status`] without the role check (tests).
    pub fn reindex_progress(&self) -> ReindexProgress {
        if self.is_shared() {
            // The rebuild may be another server's: its record is the truth.
            if let Err(e) = super::rewrap::reload_shared_job(
                self.store.as_ref(),
                JOB_KEY,
                Job::decode,
                &self.reindex.job,
            ) {
                tracing::warn!(error = %e, "could not read the rebuild's job record");
            }
        }
        let kr = self.keyring();
        let current = kr.current_index_version();
        let rebuilding = !kr.older_index_versions().is_empty();
        match &*lock(&self.reindex.job) {
            Some(job)
                if job.progress.target_version == current
                    && (!job.progress.finished || !rebuilding) =>
            {
                job.progress
            }
            // Nothing to rebuild: never rotated, or finished.
            _ if !rebuilding => ReindexProgress {
                target_version: current,
                finished: true,
                ..ReindexProgress::default()
            },
            // Rotated, and the job has not taken the new version up yet.
            _ => ReindexProgress {
                target_version: current,
                ..ReindexProgress::default()
            },
        }
    }

    /// Records listed in the blind index (distinct record keys of the
    /// reverse rows).
    fn count_indexed_records(&self) -> Result<u64> {
        let mut count = 0u64;
        let mut last: Vec<u8> = Vec::new();
        self.store.visit(Table::Index, &mut |k, _| {
            if let Some(rk) = index::reverse_record_key(k) {
                if rk != last.as_slice() {
                    count += 1;
                    last = rk.to_vec();
                }
            }
        })?;
        Ok(count)
    }

    /// Rebuilds one batch. Returns whether work remains.
    pub fn reindex_step(&self) -> Result<bool> {
        let _step = lock(&self.reindex.step);
        if self.is_closed() {
            return Ok(false);
        }
        let kr = self.keyring();
        let target = kr.current_index_version();
        let rebuilding = !kr.older_index_versions().is_empty();
        drop(kr);
        // On a shared store the rebuild may have moved on another server:
        // go on from its record, and write only if nobody else wrote it.
        let fence = if self.is_shared() {
            Some(super::rewrap::reload_shared_job(
                self.store.as_ref(),
                JOB_KEY,
                Job::decode,
                &self.reindex.job,
            )?)
        } else {
            None
        };
        let previous = lock(&self.reindex.job).clone();
        let mut job = match previous {
            Some(job)
                if job.progress.target_version == target
                    && (!job.progress.finished || !rebuilding) =>
            {
                job
            }
            _ if !rebuilding => return Ok(false),
            _ => {
                let total = self.count_indexed_records()?;
                tracing::info!(
                    target_version = target,
                    total,
                    "blind-index rebuild started"
                );
                Job {
                    progress: ReindexProgress {
                        target_version: target,
                        total_at_start: total,
                        ..ReindexProgress::default()
                    },
                    cursor: index::reverse_start(),
                }
            }
        };
        if job.progress.finished {
            return Ok(false);
        }

        let mut batch = self.reindex_options.batch_size.max(1);
        if self.is_shared() {
            // A fence per owner, each a lock in the database's bounded
            // lock table.
            batch = batch.min(SHARED_BATCH);
        }
        let page = self.store.scan_from(Table::Index, &job.cursor, batch)?;
        let rows: Vec<&Vec<u8>> = page
            .iter()
            .map(|(k, _)| k)
            .take_while(|k| index::is_reverse(k))
            .collect();
        let at_end = rows.len() < batch;
        // The records of the page, in order; a row that names none is
        // counted and passed.
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut cursor = job.cursor.clone();
        let mut malformed = 0u64;
        for k in rows {
            let next = match index::reverse_record_key(k) {
                Some(rk) => {
                    if records.last().map(Vec::as_slice) != Some(rk) {
                        records.push(rk.to_vec());
                    }
                    index::after_record(rk)
                }
                None => {
                    malformed += 1;
                    [k.as_slice(), &[0]].concat()
                }
            };
            cursor = cursor.max(next);
        }
        if malformed > 0 {
            tracing::warn!(
                rows = malformed,
                "blind-index rebuild: index rows that name no record; left as they are"
            );
        }

        let mut ws = WriteSet::new();
        let p = &mut job.progress;
        p.unreadable += malformed;
        if !records.is_empty() {
            let (locks, fences, current) = self.lock_owners_exclusively(&records)?;
            #[cfg(test)]
            if let Some(pause) = lock(&self.reindex.pause).take() {
                pause();
            }
            if self.is_closed() {
                return Ok(false);
            }
            let kr = self.keyring();
            // No rotation while an older version is live; should one have
            // come, the next step starts the job for it.
            if kr.current_index_version() != target {
                return Ok(true);
            }
            let (_, key) = kr.current_index_key().ok_or(Error::Integrity)?;
            for (rk, bytes) in records.iter().zip(&current) {
                p.examined += 1;
                if let (true, Some(bytes)) = (self.is_shared(), bytes) {
                    // The record as read: a write of it on another server
                    // meanwhile fails this batch.
                    ws.expect(Table::Records, rk.clone(), Some(bytes.clone()));
                }
                let prefix = index::reverse_prefix(rk);
                let listed = match index::listed_versions(
                    &self.store.scan_prefix(Table::Index, &prefix)?,
                    &prefix,
                ) {
                    Ok(listed) => listed,
                    Err(_) => {
                        p.unreadable += 1;
                        tracing::warn!(
                            "blind-index rebuild: a record's index rows are malformed; left as \
                             they are"
                        );
                        continue;
                    }
                };
                let older: Vec<Token> = listed
                    .iter()
                    .filter(|(_, v)| *v != Some(target))
                    .map(|(t, _)| *t)
                    .collect();
                if older.is_empty() {
                    // Written since the rotation: nothing to rebuild.
                    continue;
                }
                match self.rebuilt_tokens(rk, bytes.as_deref(), key, target) {
                    Ok(Rebuilt::Tokens(new)) => {
                        let all: Vec<Token> = listed.iter().map(|(t, _)| *t).collect();
                        index::replace(&mut ws, rk, &all, target, &new);
                        p.reindexed += 1;
                    }
                    Ok(Rebuilt::Skipped) => {
                        index::replace(&mut ws, rk, &older, target, &[]);
                        p.skipped += 1;
                    }
                    // A failure that may pass (storage, a closed engine):
                    // the batch is not written, and the next step retries
                    // it from the same cursor. Removing the rows now would
                    // leave the record unfindable for good.
                    Err(e) if !matches!(e, Error::Integrity) => return Err(e),
                    Err(e) => {
                        index::replace(&mut ws, rk, &older, target, &[]);
                        p.unreadable += 1;
                        tracing::warn!(
                            error = %e,
                            "blind-index rebuild: a record could not be read; its older index \
                             rows removed"
                        );
                    }
                }
            }
            job.cursor = cursor;
            ws.put(Table::Meta, JOB_KEY.to_vec(), job.encode());
            if let Some(raw) = &fence {
                ws.expect(Table::Meta, JOB_KEY.to_vec(), raw.clone());
            }
            // A write of these records made on another server before this
            // batch fails: its index rows may be the ones replaced here.
            fences.bump(&mut ws);
            // Synced even with `danger_unsynced_writes`: the old key is
            // destroyed (a synced keyring save) once the job ends, so no
            // batch before it may be lost with the rows it moved.
            ws.must_sync();
            self.store.write(ws)?;
            drop(fences);
            drop(locks);
        } else {
            job.cursor = cursor;
            ws.put(Table::Meta, JOB_KEY.to_vec(), job.encode());
            if let Some(raw) = &fence {
                ws.expect(Table::Meta, JOB_KEY.to_vec(), raw.clone());
            }
            // Synced even with `danger_unsynced_writes`: the old key is
            // destroyed (a synced keyring save) once the job ends, so no
            // batch before it may be lost with the rows it moved.
            ws.must_sync();
            self.store.write(ws)?;
        }
        *lock(&self.reindex.job) = Some(job.clone());
        if at_end {
            self.finish_reindex(&mut job)?;
            *lock(&self.reindex.job) = Some(job);
            return Ok(false);
        }
        Ok(true)
    }

    /// The tokens of the record at `record_key` (stored as `bytes`, if it
    /// still is) under index key `key` of version `target`: the record is
    /// opened as a read opens it, and only its indexed fields decrypted.
    fn rebuilt_tokens(
        &self,
        record_key: &[u8],
        bytes: Option<&[u8]>,
        key: &Key256,
        target: u32,
    ) -> Result<Rebuilt> {
        let Some(bytes) = bytes else {
            return Ok(Rebuilt::Skipped);
        };
        let (collection, name) = split_record_key(record_key)?;
        let c = self
            .data_collection(collection)
            .map_err(|_| Error::Integrity)?;
        let opened = match self.open_record(collection, &name, None, bytes) {
            Err(Error::SubjectErased) => return Ok(Rebuilt::Skipped),
            other => other?,
        };
        let mut values: Vec<(&str, Value)> = Vec::new();
        for sf in &opened.stored.fields {
            // A stored field the schema does not know was not written by us.
            let schema = c.field(&sf.name).ok_or(Error::Integrity)?;
            if !schema.indexed {
                continue;
            }
            let value = Value::from_plaintext(self.open_stored_field(&opened, collection, sf)?)?;
            if value.field_type() != schema.field_type {
                return Err(Error::Integrity);
            }
            values.push((sf.name.as_str(), value));
        }
        Ok(Rebuilt::Tokens(index::tokens(
            key,
            target,
            self.region.as_str(),
            &c,
            values.iter().map(|(n, v)| (*n, v)),
        )))
    }

    /// The end of a rebuild whose walk is done: the older index key
    /// versions destroyed (the keyring saved first), then the finished job
    /// record and the vault's audit event, in one write.
    fn finish_reindex(&self, job: &mut Job) -> Result<()> {
        let target = job.progress.target_version;
        let (destroyed, generation) = {
            let _custody = lock(&self.custody_lock);
            self.check_open()?;
            let mut kr = Keyring::clone(&self.keyring());
            if kr.current_index_version() != target {
                return Err(Error::FailedPrecondition(
                    "the index key changed during its rebuild".into(),
                ));
            }
            let older = kr.older_index_versions();
            for v in &older {
                kr.destroy_index(*v)
                    .map_err(super::custody::custody_error)?;
            }
            if !older.is_empty() {
                self.replace_keyring(kr)?;
            }
            (older, self.keyring().generation())
        };
        job.progress.finished = true;
        let p = job.progress;
        let mut ws = WriteSet::new();
        ws.put(Table::Meta, JOB_KEY.to_vec(), job.encode());
        let mut ev = Event::of(&Caller::internal("vault"), "reindex_finished");
        ev.detail = Some(format!(
            "index key version {target}: {} records examined, {} re-indexed, {} skipped \
             (erased or gone), {} unreadable; older index key versions destroyed: {}; keyring \
             generation {generation}",
            p.examined,
            p.reindexed,
            p.skipped,
            p.unreadable,
            if destroyed.is_empty() {
                "none left".to_owned()
            } else {
                destroyed
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ));
        self.commit(ws, ev)?;
        // The rows it replaced leave the table files too (logged, not
        // fatal: the key that made them is destroyed either way). Every
        // index row starts with 'f' or 'r'.
        if let Err(e) = self.store.compact_range(Table::Index, b"", b"s") {
            tracing::warn!(error = %e, "blind-index rebuild: compaction of the index failed");
        }
        tracing::info!(
            target_version = target,
            examined = p.examined,
            reindexed = p.reindexed,
            skipped = p.skipped,
            unreadable = p.unreadable,
            "blind-index rebuild finished"
        );
        Ok(())
    }

    /// Takes the stripes of the records' owners exclusively (ascending),
    /// then their fences, so no put, delete, rotation or erasure of those
    /// records runs meanwhile, here or on another server; returns the
    /// guards, the fences and the records as they are under them.
    #[allow(clippy::type_complexity)]
    fn lock_owners_exclusively(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<(
        Vec<ExclusiveGuard<'_>>,
        HeldFences<'_>,
        Vec<Option<Vec<u8>>>,
    )> {
        let owner = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .and_then(|b| StoredRecord::decode(b).ok())
                .map(|(r, _)| r.subject)
        };
        let mut owners: Vec<SubjectName> = Vec::new();
        loop {
            let mut stripes: Vec<usize> = owners.iter().map(stripe).collect();
            stripes.sort_unstable();
            stripes.dedup();
            let guards: Vec<ExclusiveGuard<'_>> = stripes
                .iter()
                .map(|&i| self.subject_locks[i].exclusive())
                .collect();
            let fences = self.hold_fences(&owners)?;
            let current = self.read_rows(Table::Records, keys)?;
            let before = owners.len();
            for s in current.iter().filter_map(owner) {
                if !fences.holds(&s) && !owners.contains(&s) {
                    owners.push(s);
                }
            }
            if owners.len() == before {
                return Ok((guards, fences, current));
            }
            // An owner whose fence we do not hold: take it too, and look
            // again (the set only grows, so this ends).
            drop(fences);
            drop(guards);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_record_round_trips_and_refuses_damage() {
        let job = Job {
            progress: ReindexProgress {
                target_version: 3,
                finished: false,
                examined: 12,
                reindexed: 10,
                skipped: 1,
                unreadable: 1,
                total_at_start: 100,
            },
            cursor: index::after_record(&crate::storage::record_key("people", &[0xa1; 32])),
        };
        let b = job.encode();
        assert_eq!(b.len(), JOB_HEADER + job.cursor.len());
        assert_eq!(Job::decode(&b).unwrap(), job);
        let done = Job {
            progress: ReindexProgress {
                finished: true,
                ..job.progress
            },
            cursor: Vec::new(),
        };
        assert_eq!(Job::decode(&done.encode()).unwrap(), done);
        // Every truncation, a byte too many, a finished byte of 2, another
        // version, a cursor length that disagrees: refused, never a panic.
        for n in 0..b.len() {
            assert!(Job::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut t = b.clone();
        t.push(0);
        assert!(Job::decode(&t).is_err());
        let mut t = b.clone();
        t[5] = 2;
        assert!(Job::decode(&t).is_err());
        for v in [0, 2, 9] {
            let mut t = b.clone();
            t[0] = v;
            let err = Job::decode(&t).unwrap_err();
            assert!(err.to_string().contains("not supported"), "{err}");
        }
        let mut t = b;
        t[JOB_HEADER - 1] ^= 1;
        assert!(Job::decode(&t).is_err());
        // The re-wrap job's record is not one.
        assert!(Job::decode(&crate::engine::job_record_seed()).is_err());
    }
}
