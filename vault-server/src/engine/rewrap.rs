//! The root-key re-wrap job: after a rotation, every subject key wrapped
//! under an older root key version is unwrapped and wrapped again under the
//! current one, in batches, at a bounded pace, in the background.
//!
//! Each batch writes its re-wrapped keys and the job's cursor in one atomic
//! write, so after a crash the job resumes exactly after the last key it
//! committed: no key is skipped, and none is re-wrapped from a stale copy.
//! A re-wrap replaces the wrapped bytes only; the subject key, its version
//! and the data it encrypts do not change, so reads and writes go on.
//!
//! Persisted job (Meta `rewrap_job`, integers big-endian):
//!
//! ```text
//!  0     1        5          6           14         22        30           38        46      48
//!  +-----+--------+----------+-----------+----------+---------+------------+---------+-------+--------+
//!  | ver | target | finished | rewrapped | examined | pending | unreadable | removed | u16 c | cursor |
//!  | =1  | u32    | u8 0/1   | u64       | u64      | u64     | u64        | u64     |       | (c B)  |
//!  +-----+--------+----------+-----------+----------+---------+------------+---------+-------+--------+
//! ```
//! `cursor` is the first subject-key row not yet examined.
//!
//! Rows of erased subjects (a restored backup brings them back) are removed
//! as the job meets them: the keyring refuses them anyway, and left in
//! place they would keep an old root version from being retired. Rows that
//! cannot be unwrapped for another reason (damaged, or under a root version
//! no longer available) are left as they are, counted and logged.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Engine};
use crate::keys::{bucket_of, Rewrapper};
use crate::policy::{Caller, Operation};
use crate::storage::{parse_subject_key_id, Store, Table, WriteSet};
use crate::{Error, Result};

const JOB_KEY: &[u8] = b"rewrap_job";
const JOB_V1: u8 = 1;
/// How long the job waits before retrying after a storage error.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Pace of the re-wrap job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapOptions {
    /// Subject keys per batch (one atomic write each).
    pub batch_size: usize,
    /// Most subject keys examined per second; 0 for no limit.
    pub keys_per_second: u64,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        RewrapOptions {
            batch_size: 50,
            keys_per_second: 10_000,
        }
    }
}

/// Where the re-wrap job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewrapProgress {
    /// The root key version keys are re-wrapped to.
    pub target_version: u32,
    /// Whether every subject key is wrapped under the target.
    pub finished: bool,
    /// Keys re-wrapped by this job.
    pub rewrapped: u64,
    /// Keys examined by this job (every version).
    pub examined: u64,
    /// Keys that needed a re-wrap when the job started.
    pub pending_at_start: u64,
    /// Keys that could not be unwrapped (damaged, or under a root version
    /// no longer available); left as they are and logged.
    pub unreadable: u64,
    /// Rows of erased subjects (from a restored backup) removed.
    pub removed_erased: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    progress: RewrapProgress,
    cursor: Vec<u8>,
}

impl Job {
    fn encode(&self) -> Vec<u8> {
        let p = &self.progress;
        let mut b = Vec::with_capacity(48 + self.cursor.len());
        b.push(JOB_V1);
        b.extend_from_slice(&p.target_version.to_be_bytes());
        b.push(u8::from(p.finished));
        for n in [
            p.rewrapped,
            p.examined,
            p.pending_at_start,
            p.unreadable,
            p.removed_erased,
        ] {
            b.extend_from_slice(&n.to_be_bytes());
        }
        // Subject-key rows are short (an id of at most MAX_ID_BYTES and a
        // version), so the cursor fits a u16.
        b.extend_from_slice(&(self.cursor.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.cursor);
        b
    }

    fn decode(b: &[u8]) -> Result<Job> {
        let bad = || Error::Storage("malformed re-wrap job record".into());
        let (&ver, rest) = b.split_first().ok_or_else(bad)?;
        if ver != JOB_V1 {
            return Err(Error::Storage(format!(
                "re-wrap job record version {ver} is not supported"
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
        let (len, cursor) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        if cursor.len() != u16::from_be_bytes(*len) as usize || finished > 1 {
            return Err(bad());
        }
        Ok(Job {
            progress: RewrapProgress {
                target_version: u32::from_be_bytes(*target),
                finished: finished == 1,
                rewrapped: n[0],
                examined: n[1],
                pending_at_start: n[2],
                unreadable: n[3],
                removed_erased: n[4],
            },
            cursor: cursor.to_vec(),
        })
    }
}

/// The job record decoder, for the fuzz target: `Some` with the record
/// encoded again when `bytes` decode (the target checks it is the same
/// bytes), `None` when they are refused. Only in test and fuzzing builds.
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub(crate) fn reencode_job_record(bytes: &[u8]) -> Option<Vec<u8>> {
    Job::decode(bytes).ok().map(|job| job.encode())
}

/// A well-formed job record (a cursor part way through), the fuzz
/// target's seed.
#[cfg(test)]
pub(crate) fn job_record_seed() -> Vec<u8> {
    Job {
        progress: RewrapProgress {
            target_version: 2,
            finished: false,
            rewrapped: 40,
            examined: 57,
            pending_at_start: 120,
            unreadable: 1,
            removed_erased: 2,
        },
        cursor: crate::storage::subject_key_id(1, &[1; 32], 3),
    }
    .encode()
}

/// A background job's persisted record (Meta `key`), decoded. A damaged
/// record must not keep the vault from unsealing: it is logged and the
/// job starts over (which the job must make harmless).
pub(super) fn load_job_record<J>(
    store: &dyn Store,
    key: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<J>,
    job: &str,
) -> Result<Option<J>> {
    Ok(match store.get(Table::Meta, key)?.map(|b| decode(&b)) {
        Some(Ok(record)) => Some(record),
        Some(Err(e)) => {
            tracing::warn!(error = %e, job, "background job record unreadable; the job starts over");
            None
        }
        None => None,
    })
}

/// On a store other servers share: a background job's record as stored now
/// (another server may have moved the job on), which `job` then holds, and
/// the stored bytes, for the step's write to be conditional on.
pub(super) fn reload_shared_job<J>(
    store: &dyn Store,
    key: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<J>,
    job: &Mutex<Option<J>>,
) -> Result<Option<Vec<u8>>> {
    let raw = store.get(Table::Meta, key)?;
    *lock(job) = raw.as_deref().and_then(|b| decode(b).ok());
    Ok(raw)
}

/// The job's state in memory: the last committed job record, and a wake-up
/// signal (a rotation, or the engine closing). `Debug` omits the cursor
/// (a subject key row: bucket and storage name).
pub(super) struct JobState {
    job: Mutex<Option<Job>>,
    generation: Mutex<u64>,
    changed: Condvar,
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
        // Re-wrapping is idempotent.
        let job = load_job_record(store, JOB_KEY, Job::decode, "re-wrap")?;
        Ok(JobState {
            job: Mutex::new(job),
            generation: Mutex::new(0),
            changed: Condvar::new(),
        })
    }

    /// Wakes the job (new work, or time to stop).
    pub(super) fn wake(&self) {
        *lock(&self.generation) += 1;
        self.changed.notify_all();
    }

    fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    /// Waits until woken after `seen`, or `timeout` passes.
    fn wait(&self, seen: u64, timeout: Option<Duration>) {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut generation = lock(&self.generation);
        while *generation == seen {
            match deadline {
                None => {
                    generation = self
                        .changed
                        .wait(generation)
                        .unwrap_or_else(|p| p.into_inner());
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    generation = self
                        .changed
                        .wait_timeout(generation, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

impl Engine {
    /// Where the re-wrap job stands.
    pub fn rewrap_status(&self, caller: &Caller) -> Result<RewrapProgress> {
        self.authorize_audited(caller, Operation::Custody, None, "rewrap_status")?;
        self.record(caller, "rewrap_status", None, &Ok(()));
        Ok(self.rewrap_progress())
    }

    /// [`Engine::rewrap_status`] without the role check (tests, benches).
    pub fn rewrap_progress(&self) -> RewrapProgress {
        if self.is_shared() {
            // The job may be another server's: its record is the truth.
            if let Err(e) =
                reload_shared_job(self.store.as_ref(), JOB_KEY, Job::decode, &self.rewrap.job)
            {
                tracing::warn!(error = %e, "could not read the re-wrap job record");
            }
        }
        let current = self.keyring().current_root().map_or(0, |(v, _)| v);
        match &*lock(&self.rewrap.job) {
            Some(job) if job.progress.target_version == current => job.progress,
            // Never rotated: nothing to do.
            None if current == 1 => RewrapProgress {
                target_version: current,
                finished: true,
                ..RewrapProgress::default()
            },
            // Rotated, and the job has not taken the new version up yet.
            _ => RewrapProgress {
                target_version: current,
                ..RewrapProgress::default()
            },
        }
    }

    /// Re-wraps one batch. Returns whether work remains.
    pub fn rewrap_step(&self) -> Result<bool> {
        let _custody = lock(&self.custody_lock);
        if self.is_closed() {
            return Ok(false);
        }
        let kr = self.keyring();
        let current = kr.current_root()?.0;
        // On a shared store the job may have moved on another server (the
        // leader before this one): go on from its record, and write only
        // if nobody else wrote it meanwhile.
        let fence = if self.is_shared() {
            Some(reload_shared_job(
                self.store.as_ref(),
                JOB_KEY,
                Job::decode,
                &self.rewrap.job,
            )?)
        } else {
            None
        };
        let previous = lock(&self.rewrap.job).clone();
        let mut job = match previous {
            Some(job) if job.progress.target_version == current => job,
            _ => {
                let counts = self.count_wrapped()?;
                let pending = counts
                    .iter()
                    .filter(|(v, _)| **v != current)
                    .map(|(_, n)| n)
                    .sum();
                tracing::info!(target_version = current, pending, "re-wrap job started");
                Job {
                    progress: RewrapProgress {
                        target_version: current,
                        pending_at_start: pending,
                        ..RewrapProgress::default()
                    },
                    cursor: Vec::new(),
                }
            }
        };
        if job.progress.finished {
            return Ok(false);
        }
        let batch = self.rewrap_options.batch_size.max(1);
        let page = self
            .store
            .scan_from(Table::SubjectKeys, &job.cursor, batch)?;
        let mut ws = WriteSet::new();
        let p = &mut job.progress;
        let mut rewrapper = Rewrapper::new(&kr);
        let mut wrapped = 0u64;
        let shared = fence.is_some();
        for (k, v) in &page {
            p.examined += 1;
            match parse_subject_key_id(k).and_then(|(bucket, subject, version)| {
                // A row filed under another bucket than its subject's was
                // not written by us.
                if bucket != bucket_of(&subject, kr.shred_buckets()) {
                    return Err(Error::Integrity);
                }
                rewrapper.rewrap(&subject, version, v)
            }) {
                Ok(Some(rewrapped)) => {
                    if shared {
                        // A subject-key rotation on another server may
                        // have destroyed this version since: not brought
                        // back.
                        ws.expect(Table::SubjectKeys, k.clone(), Some(v.clone()));
                    }
                    ws.put(Table::SubjectKeys, k.clone(), rewrapped);
                    p.rewrapped += 1;
                    wrapped += 1;
                }
                Ok(None) => {}
                Err(Error::SubjectErased) => {
                    ws.delete(Table::SubjectKeys, k.clone());
                    p.removed_erased += 1;
                }
                Err(e) => {
                    p.unreadable += 1;
                    tracing::warn!(error = %e, "re-wrap: a subject key could not be unwrapped; left as it is");
                }
            }
        }
        if let Some((last, _)) = page.last() {
            job.cursor = last.clone();
            job.cursor.push(0);
        }
        if page.len() < batch {
            job.progress.finished = true;
        }
        ws.put(Table::Meta, JOB_KEY.to_vec(), job.encode());
        if let Some(raw) = fence {
            ws.expect(Table::Meta, JOB_KEY.to_vec(), raw);
            // The page was re-wrapped under this keyring: written only if
            // no other server changed it meanwhile (an erasure's epoch).
            ws.expect_keyring(kr.generation());
        }
        self.wraps
            .commit(current, wrapped, ws, |ws| self.store.write(ws))?;
        // A job after a rotation is a custody event; the empty job of a
        // vault that never rotated is not.
        if job.progress.finished && (job.progress.target_version > 1 || job.progress.rewrapped > 0)
        {
            self.record(
                &Caller::internal("vault"),
                "rewrap_finished",
                Some(format!(
                    "root version {current}: {} re-wrapped, {} unreadable, {} erased removed",
                    job.progress.rewrapped, job.progress.unreadable, job.progress.removed_erased
                )),
                &Ok(()),
            );
            tracing::info!(
                target_version = current,
                rewrapped = job.progress.rewrapped,
                unreadable = job.progress.unreadable,
                "re-wrap job finished"
            );
        }
        let more = !job.progress.finished;
        *lock(&self.rewrap.job) = Some(job);
        Ok(more)
    }

    /// The engine's background thread, until the engine is closed: runs
    /// the re-wrap job and the blind-index rebuild while work remains, each
    /// at its configured pace, and signs an audit checkpoint every
    /// [`interval`](super::CheckpointOptions::interval) (if the log grew);
    /// sleeps until the next rotation otherwise.
    pub fn run_background(self: &Arc<Self>) {
        let pace = |per_second: u64, batch: usize| match per_second {
            0 => Duration::ZERO,
            n => Duration::from_secs_f64(batch.max(1) as f64 / n as f64),
        };
        let rewrap_budget = pace(
            self.rewrap_options.keys_per_second,
            self.rewrap_options.batch_size,
        );
        let reindex_budget = pace(
            self.reindex_options.rows_per_second,
            self.reindex_options.batch_size,
        );
        let interval = self.checkpoints.interval;
        // `checked_add`: an interval too long to add means "never".
        let after = |t: Instant| t.checked_add(interval);
        let mut next_checkpoint = after(Instant::now());
        // When each job runs next; `None`: idle until woken.
        let mut next_rewrap = Some(Instant::now());
        let mut next_reindex = Some(Instant::now());
        // The generation first, then the flag: a close after this read
        // bumps the generation, so the wait below cannot miss it.
        let mut seen = self.rewrap.generation();
        // Retention sweeps: the first soon after the vault opens (records
        // may have become due while it was down), then every interval.
        let sweep_every = self.retention_sweep_interval();
        let mut next_sweep = (!sweep_every.is_zero())
            .then(|| Instant::now().checked_add(sweep_every.min(Duration::from_secs(1))))
            .flatten();
        // On a store other servers share: when this server looks for their
        // changes next, and whether it leads the background jobs (until it
        // does, none of them runs here).
        let shared = self.is_shared();
        let mut next_sync = shared.then(Instant::now);
        let mut leading = !shared;
        loop {
            if self.is_closed() {
                // Another server leads from now on.
                self.store.resign();
                return;
            }
            let now = Instant::now();
            if next_sync.is_some_and(|at| now >= at) {
                let was_leading = leading;
                leading = match self.sync_shared() {
                    Ok((changed, leads)) => {
                        if changed {
                            // A rotation through another server: the jobs look.
                            next_rewrap = Some(Instant::now());
                            next_reindex = Some(Instant::now());
                        }
                        leads
                    }
                    Err(Error::Sealed) => {
                        // Rekeyed through another server: this one's unseal
                        // key opens nothing any more.
                        self.close();
                        self.store.resign();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not look for other servers' changes");
                        false
                    }
                };
                if leading && !was_leading {
                    tracing::info!("this server leads the background jobs now");
                    next_rewrap = Some(Instant::now());
                    next_reindex = Some(Instant::now());
                    next_sweep = (!sweep_every.is_zero()).then(Instant::now);
                } else if !leading && was_leading {
                    tracing::warn!("this server no longer leads the background jobs");
                }
                next_sync = Instant::now().checked_add(super::SYNC_INTERVAL);
            }
            if !leading {
                let wait = next_sync.map(|at| at.saturating_duration_since(Instant::now()));
                if wait != Some(Duration::ZERO) {
                    self.rewrap.wait(seen, wait);
                }
                seen = self.rewrap.generation();
                continue;
            }
            if !interval.is_zero() && next_checkpoint.is_some_and(|at| now >= at) {
                if let Err(e) = self.checkpoint() {
                    tracing::error!(error = %e, "could not sign a timed audit checkpoint");
                }
                next_checkpoint = after(Instant::now());
            }
            if next_rewrap.is_some_and(|at| now >= at) {
                let started = Instant::now();
                next_rewrap = match self.rewrap_step() {
                    Ok(true) => Some(started + rewrap_budget),
                    Ok(false) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "re-wrap batch failed; retrying");
                        Some(Instant::now() + RETRY_AFTER)
                    }
                };
            }
            if next_reindex.is_some_and(|at| now >= at) {
                let started = Instant::now();
                next_reindex = match self.reindex_step() {
                    Ok(true) => Some(started + reindex_budget),
                    Ok(false) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "blind-index rebuild batch failed; retrying");
                        Some(Instant::now() + RETRY_AFTER)
                    }
                };
            }
            if next_sweep.is_some_and(|at| now >= at) {
                if let Err(e) = self.sweep_expired() {
                    tracing::error!(error = %e, "retention sweep failed; retrying at the next");
                }
                next_sweep = Instant::now().checked_add(sweep_every);
            }
            let next = [
                next_rewrap,
                next_reindex,
                next_checkpoint.filter(|_| !interval.is_zero()),
                next_sweep,
                next_sync,
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next.map(|at| at.saturating_duration_since(Instant::now()));
            if wait != Some(Duration::ZERO) {
                self.rewrap.wait(seen, wait);
            }
            // Woken (a rotation, or the engine closing): both jobs look.
            let generation = self.rewrap.generation();
            if generation != seen {
                seen = generation;
                next_rewrap = Some(Instant::now());
                next_reindex = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_record_round_trips_and_refuses_damage() {
        let job = Job {
            progress: RewrapProgress {
                target_version: 3,
                finished: false,
                rewrapped: 10,
                examined: 12,
                pending_at_start: 100,
                unreadable: 1,
                removed_erased: 2,
            },
            cursor: crate::storage::subject_key_id(7, &[0xa1; 32], 1),
        };
        let b = job.encode();
        assert_eq!(Job::decode(&b).unwrap(), job);
        for n in 0..b.len() {
            assert!(Job::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut t = b.clone();
        t.push(0);
        assert!(Job::decode(&t).is_err());
        let mut t = b.clone();
        t[5] = 2;
        assert!(Job::decode(&t).is_err());
        let mut t = b;
        t[0] = 9;
        assert!(Job::decode(&t).is_err());
    }
}
