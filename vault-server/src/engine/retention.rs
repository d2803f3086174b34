//! Retention: a collection may give its records a time to live (and a
//! grace period). A record expires `ttl` after its last write, by the
//! vault's clock (the monitor's, which tests move): from then on gets and
//! searches pass it by, and a subject export lists it marked expired. Once
//! it has been expired for the grace period too, the sweeper purges it.
//!
//! The sweeper runs on the vault's background thread every
//! `retention_sweep_interval` (and by hand, [`Engine::sweep_expired`]). It
//! keeps no state: each sweep reads every record of every collection with
//! a retention (the write time is in the record's clear header, so no key
//! is needed to find what is due), so a restart loses nothing; the next
//! sweep finds what is due. Each batch takes the stripes of the records'
//! owners exclusively, reads them again (a record rewritten meanwhile has
//! a new write time and stays), checks each record's tag (which covers the
//! write time), and deletes them with their subject-index and
//! blind-index rows in one atomic write with one audit event of the vault
//! (`retention_purge`: the collection and the number of records, never an
//! id or a pseudonym). The purged keys' range and their index rows are
//! then compacted, so the ciphertext and the tokens leave the tables; the
//! subject keys are not destroyed (other
//! records of the subject may live on), so this is deletion, not
//! crypto-shredding.

use std::time::Duration;

use super::{Collection, Engine, Event, Retention};
use crate::policy::Caller;
use crate::storage::{split_record_key, subject_record_key, StoredRecord, Table, WriteSet};
use crate::{Error, Result};

/// How often the background thread sweeps, by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Records read, and at most purged, per batch.
const SWEEP_BATCH: usize = 64;

/// Whether `stored` is past its time to live and grace period at `now`
/// (a record without a write time never is).
fn purge_due(retention: Retention, stored: &StoredRecord, now: u64) -> bool {
    stored
        .written_ms
        .is_some_and(|w| now >= retention.purge_at_ms(w))
}

impl Engine {
    /// Purges, in every collection with a retention, the records expired
    /// for longer than their grace period. Returns how many it purged.
    pub fn sweep_expired(&self) -> Result<u64> {
        self.check_open()?;
        let collections: Vec<std::sync::Arc<Collection>> = self
            .read_collections()
            .values()
            .filter(|c| c.retention.is_some() && self.check_region(c).is_ok())
            .cloned()
            .collect();
        let mut purged = 0;
        for c in collections {
            purged += self.sweep_collection(&c)?;
        }
        Ok(purged)
    }

    /// The interval of the background sweep (zero: never).
    pub(super) fn retention_sweep_interval(&self) -> Duration {
        self.retention_sweep_interval
    }

    fn sweep_collection(&self, c: &Collection) -> Result<u64> {
        let Some(retention) = c.retention else {
            return Ok(0);
        };
        let mut prefix = c.name.as_bytes().to_vec();
        prefix.push(0);
        let mut from = prefix.clone();
        let mut purged = 0;
        loop {
            self.check_open()?;
            let page = self.store.scan_from(Table::Records, &from, SWEEP_BATCH)?;
            let full = page.len() == SWEEP_BATCH;
            let now = self.monitor.now_ms();
            let mut last = None;
            let mut due = Vec::new();
            for (key, value) in page {
                if !key.starts_with(&prefix) {
                    break;
                }
                if StoredRecord::decode(&value).is_ok_and(|(r, _)| purge_due(retention, &r, now)) {
                    due.push(key.clone());
                }
                last = Some(key);
            }
            if !due.is_empty() {
                purged += self.purge(c, &due)?;
            }
            match last {
                Some(key) if full => from = [key.as_slice(), &[0]].concat(),
                _ => break,
            }
        }
        Ok(purged)
    }

    /// Deletes those of `keys` (records of `c`) still due, in one write
    /// with its event; compacts their range. It holds the stripes of the
    /// records' owners exclusively (sorted, as the lock order asks), so no
    /// write of those records runs between the check and the delete: a
    /// record rewritten before the stripes are taken has a new write time
    /// and stays, one rewritten after waits for the purge and then writes
    /// it anew. Each record's tag is checked before its write time is
    /// trusted (an edited write time is not a reason to delete).
    fn purge(&self, c: &Collection, keys: &[Vec<u8>]) -> Result<u64> {
        let Some(retention) = c.retention else {
            return Ok(0);
        };
        let first_read = self.read_rows(Table::Records, keys)?;
        let owners: Vec<_> = first_read
            .iter()
            .filter_map(|v| StoredRecord::decode(v.as_deref()?).ok())
            .map(|(r, _)| r.subject)
            .collect();
        let mut stripes: Vec<usize> = owners.iter().map(super::stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _held: Vec<_> = stripes
            .iter()
            .map(|&i| self.subject_locks[i].exclusive())
            .collect();
        // And against writes through other servers.
        let fences = self.hold_fences(&owners)?;
        self.check_open()?;
        let current = self.read_rows(Table::Records, keys)?;
        let now = self.monitor.now_ms();
        let indexed = c.fields.iter().any(|f| f.indexed);
        let mut ws = WriteSet::new();
        let mut purged = Vec::new();
        let mut index_rows = Vec::new();
        let mut unverified = 0u64;
        for (key, value) in keys.iter().zip(current) {
            let Some(bytes) = value else { continue };
            let Ok((stored, _)) = StoredRecord::decode(&bytes) else {
                continue;
            };
            // Rewritten since it was read (a new write time), or now owned
            // by a subject whose fence (and stripe) is not held: left to
            // the next sweep.
            if !purge_due(retention, &stored, now) || !fences.holds(&stored.subject) {
                continue;
            }
            let (collection, name) = split_record_key(key)?;
            match self.open_record(collection, &name, None, &bytes) {
                // An erased subject's record (a restored backup): its key
                // is gone, and so may the record be.
                Ok(_) | Err(Error::SubjectErased) => {}
                Err(_) => {
                    unverified += 1;
                    continue;
                }
            }
            ws.delete(
                Table::SubjectRecords,
                subject_record_key(&stored.subject, key),
            );
            if indexed {
                index_rows.extend(self.unindex_record(&mut ws, key)?);
            }
            if self.is_shared() {
                ws.expect(Table::Records, key.clone(), Some(bytes.clone()));
            }
            ws.delete(Table::Records, key.clone());
            purged.push(key);
        }
        if unverified > 0 {
            tracing::warn!(
                collection = %c.name,
                records = unverified,
                "retention: records due for purge fail their integrity check; left in place"
            );
        }
        let (Some(first), Some(last)) = (purged.first(), purged.last()) else {
            return Ok(0);
        };
        let mut ev = Event::of(&Caller::internal("vault"), "retention_purge");
        ev.collection = Some(c.name.clone());
        ev.detail = Some(format!(
            "{} records purged: past the time to live of {} s and the grace period of {} s",
            purged.len(),
            retention.ttl_seconds,
            retention.grace_seconds
        ));
        // A write of these records made on another server before this
        // purge fails: it would bring back index rows this purge deletes.
        fences.bump(&mut ws);
        self.commit(ws, ev)?;
        if let Err(e) = self.store.compact_range(Table::Records, first, last) {
            tracing::warn!(error = %e, "retention: compaction failed");
        }
        self.compact_keys(Table::Index, &index_rows);
        tracing::info!(
            collection = %c.name,
            records = purged.len(),
            "retention: expired records purged"
        );
        Ok(purged.len() as u64)
    }
}
