//! Key custody on an unsealed engine: root-key rotation, retirement and
//! destruction, subject-key rotation, and erasure (crypto-shredding).
//!
//! Every operation here holds `custody_lock`, so none of them (nor a
//! re-wrap batch) writes back a key that another one deleted. Operations on
//! one subject also hold that subject's lock exclusively, so no write of the
//! subject runs meanwhile. Lock order: subject stripe → custody → create.
//! (Index-key rotation and the blind-index rebuild are in `reindex.rs`.)

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{lock, stripe, validate_id, Engine, Ids};
use crate::audit::Event;
use crate::crypto::Key256;
use crate::keys::seal::Measurement;
use crate::keys::{
    wrap_subject_key, wrapping_version, ErasureReceipt, KeyState, Keyring, KeyringError, Rewrapper,
    SubjectKeys, SubjectName,
};
use crate::policy::{Caller, Operation};
use crate::storage::{
    bucket_prefix, parse_subject_key_id, split_record_key, subject_key_id, subject_key_prefix,
    StoredRecord, Table, WriteSet,
};
use crate::{Error, Result};

/// Tries of an erasure's write on a shared store (see `erase_subject`).
const ERASE_ATTEMPTS: u32 = 3;

/// One root key version, as custodians see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootKeyInfo {
    /// The version.
    pub version: u32,
    /// Its state.
    pub state: KeyState,
    /// Whether it wraps new subject keys.
    pub current: bool,
    /// Subject keys wrapped under it (0 when not counted).
    pub wrapped_subject_keys: u64,
    /// Keys it has wrapped, ever (each an AES-GCM encryption under a random
    /// nonce; NIST SP 800-38D bounds them at 2^32).
    pub wraps: u64,
}

/// What a subject-key rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectRotation {
    /// The new key version.
    pub new_version: u32,
    /// Records re-encrypted.
    pub records: u64,
    /// Field values re-encrypted.
    pub fields: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Engine {
    /// Root key versions and their states (not counting subject keys).
    pub fn root_versions(&self) -> Vec<RootKeyInfo> {
        let kr = self.keyring();
        let current = kr.current_root().map(|(v, _)| v).unwrap_or(0);
        kr.root_versions()
            .map(|(version, state)| RootKeyInfo {
                version,
                state,
                current: version == current,
                wrapped_subject_keys: 0,
                wraps: self.wraps.of(version),
            })
            .collect()
    }

    /// Whether the current root key has wrapped as many keys as the
    /// configured bound, and should be rotated.
    pub fn root_rotation_due(&self) -> bool {
        let kr = self.keyring();
        kr.current_root()
            .is_ok_and(|(v, _)| self.wraps.of(v) >= self.wraps.rotate_after())
    }

    /// The configured bound on wraps per root key version.
    pub fn rotate_root_after_wraps(&self) -> u64 {
        self.wraps.rotate_after()
    }

    /// Every root key version with the number of subject keys it wraps
    /// (a scan of every wrapped subject key).
    pub fn root_keys(&self, caller: &Caller) -> Result<Vec<RootKeyInfo>> {
        self.authorize_audited(caller, Operation::Custody, None, "list_root_keys")?;
        self.record(caller, "list_root_keys", None, &Ok(()));
        let counts = self.count_wrapped()?;
        let mut all = self.root_versions();
        for k in &mut all {
            k.wrapped_subject_keys = counts.get(&k.version).copied().unwrap_or(0);
        }
        Ok(all)
    }

    /// Subject keys per wrapping root version.
    pub(super) fn count_wrapped(&self) -> Result<BTreeMap<u32, u64>> {
        // Few versions exist at once: a short list beats a map per row.
        let mut counts: Vec<(u32, u64)> = Vec::new();
        self.store.visit(Table::SubjectKeys, &mut |_, v| {
            // An unreadable row counts under version 0.
            let version = wrapping_version(v).unwrap_or(0);
            match counts.iter_mut().find(|(v, _)| *v == version) {
                Some((_, n)) => *n += 1,
                None => counts.push((version, 1)),
            }
        })?;
        Ok(counts.into_iter().collect())
    }

    /// Makes a new root key version current, saves the keyring, and starts
    /// the job that re-wraps every subject key under it.
    pub fn rotate_root(&self, caller: &Caller) -> Result<u32> {
        self.audited(caller, Operation::Custody, "rotate_root_key", || {
            self.rotate_root_authorized(caller)
        })
    }

    fn rotate_root_authorized(&self, caller: &Caller) -> Result<u32> {
        let _custody = lock(&self.custody_lock);
        self.check_open()?;
        let mut kr = Keyring::clone(&self.keyring());
        let version = kr.rotate_root();
        self.replace_keyring(kr)?;
        tracing::info!(version, principal = %caller.principal.name, "root key rotated");
        self.record(
            caller,
            "rotate_root_key",
            Some(format!(
                "version {version}; keyring generation {}",
                self.keyring().generation()
            )),
            &Ok(()),
        );
        self.rewrap.wake();
        Ok(version)
    }

    /// Retires a root key version: it unwraps no more. Refused while it is
    /// current or still wraps a subject key.
    pub fn retire_root(&self, caller: &Caller, version: u32) -> Result<()> {
        self.audited(caller, Operation::Custody, "retire_root_key", || {
            self.retire_root_authorized(caller, version)
        })
    }

    fn retire_root_authorized(&self, caller: &Caller, version: u32) -> Result<()> {
        let _custody = lock(&self.custody_lock);
        self.check_open()?;
        let mut kr = Keyring::clone(&self.keyring());
        kr.retire_root(version).map_err(custody_error)?;
        // No new key is wrapped under a non-current version, so a count of
        // zero stays zero.
        let wraps = self.count_wrapped()?.get(&version).copied().unwrap_or(0);
        if wraps > 0 {
            return Err(Error::FailedPrecondition(format!(
                "root key version {version} still wraps {wraps} subject keys; \
                 wait for the re-wrap job (vaultctl operator rewrap-status --wait)"
            )));
        }
        self.replace_keyring(kr)?;
        tracing::info!(version, principal = %caller.principal.name, "root key retired");
        self.record(
            caller,
            "retire_root_key",
            Some(format!(
                "version {version}; keyring generation {}",
                self.keyring().generation()
            )),
            &Ok(()),
        );
        Ok(())
    }

    /// Destroys a retired root key version: its bytes leave the keyring
    /// file, which is rewritten now.
    pub fn destroy_root(&self, caller: &Caller, version: u32) -> Result<()> {
        self.audited(caller, Operation::Custody, "destroy_root_key", || {
            self.destroy_root_authorized(caller, version)
        })
    }

    fn destroy_root_authorized(&self, caller: &Caller, version: u32) -> Result<()> {
        let _custody = lock(&self.custody_lock);
        self.check_open()?;
        let mut kr = Keyring::clone(&self.keyring());
        kr.destroy_root(version).map_err(custody_error)?;
        self.replace_keyring(kr)?;
        tracing::info!(version, principal = %caller.principal.name, "root key destroyed");
        self.record(
            caller,
            "destroy_root_key",
            Some(format!(
                "version {version}; keyring generation {}",
                self.keyring().generation()
            )),
            &Ok(()),
        );
        Ok(())
    }

    /// Adds a build to the keyring's approved list (the key release
    /// gate, in force from the next unseal of every server). Returns
    /// false if it was approved already (nothing saved).
    pub fn approve_build(&self, caller: &Caller, build: Measurement) -> Result<bool> {
        self.audited(caller, Operation::Custody, "approve_build", || {
            self.change_builds(caller, "approve_build", &build, |kr| {
                kr.approve_build(build).map_err(custody_error)
            })
        })
    }

    /// Removes a build from the approved list (from the next unseal on, a
    /// server of that build is refused its key). Returns false if it was
    /// not approved (nothing saved).
    pub fn revoke_build(&self, caller: &Caller, build: Measurement) -> Result<bool> {
        self.audited(caller, Operation::Custody, "revoke_build", || {
            self.change_builds(caller, "revoke_build", &build, |kr| {
                Ok(kr.revoke_build(&build))
            })
        })
    }

    fn change_builds(
        &self,
        caller: &Caller,
        operation: &str,
        build: &Measurement,
        change: impl FnOnce(&mut Keyring) -> Result<bool>,
    ) -> Result<bool> {
        let _custody = lock(&self.custody_lock);
        self.check_open()?;
        let mut kr = Keyring::clone(&self.keyring());
        let changed = change(&mut kr)?;
        let generation = if changed {
            self.replace_keyring(kr)?;
            self.keyring().generation()
        } else {
            kr.generation()
        };
        let approved = self.keyring().sealing().approved_builds.len();
        tracing::info!(
            measurement = %hex::encode(build),
            changed,
            approved,
            principal = %caller.principal.name,
            "{operation}"
        );
        self.record(
            caller,
            operation,
            Some(format!(
                "measurement {}; {}; {approved} approved builds; keyring generation {generation}",
                hex::encode(build),
                if changed { "saved" } else { "unchanged" },
            )),
            &Ok(()),
        );
        Ok(changed)
    }

    /// The public half of the vault's signing key.
    pub fn signing_public_key(&self) -> [u8; 32] {
        self.audit_signer.verifying_key().to_bytes()
    }

    /// The subject's stored key rows: (version, wrapped), oldest first.
    fn subject_key_rows(&self, subject: &SubjectName) -> Result<Vec<(u32, Vec<u8>)>> {
        let bucket = self.names.bucket(subject);
        self.store
            .scan_prefix(Table::SubjectKeys, &subject_key_prefix(bucket, subject))?
            .into_iter()
            .map(|(k, v)| {
                let (b, s, version) = parse_subject_key_id(&k)?;
                if (b, &s) != (bucket, subject) {
                    return Err(Error::Integrity);
                }
                Ok((version, v))
            })
            .collect()
    }

    /// The subject's records, from the index: (index key, record key,
    /// stored bytes). Stale entries (the record is gone, or now belongs to
    /// another subject) come back with `None`.
    #[allow(clippy::type_complexity)]
    fn subject_records(
        &self,
        subject: &SubjectName,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>, Option<Vec<u8>>)>> {
        let entries = self.store.scan_prefix(Table::SubjectRecords, subject)?;
        let record_keys: Vec<Vec<u8>> = entries
            .iter()
            .map(|(k, _)| k[subject.len()..].to_vec())
            .collect();
        let values = self.store.multi_get(Table::Records, &record_keys)?;
        Ok(entries
            .into_iter()
            .zip(record_keys)
            .zip(values)
            .map(|(((ik, _), rk), v)| {
                let mine =
                    v.filter(|b| StoredRecord::decode(b).is_ok_and(|(r, _)| r.subject == *subject));
                (ik, rk, mine)
            })
            .collect())
    }

    /// Validates `subject` and takes what a subject custody change holds
    /// for its whole length: the subject's stripe exclusively (no write of
    /// the subject meanwhile), the custody lock, then the subject's fence
    /// (no write of it on another server either; taken under custody, so
    /// custody calls queued here hold no database connection); refuses a
    /// closed engine. They are let go in reverse order.
    #[allow(clippy::type_complexity)]
    fn lock_subject_custody(
        &self,
        subject: &str,
    ) -> Result<(
        SubjectName,
        super::stripes::ExclusiveGuard<'_>,
        std::sync::MutexGuard<'_, ()>,
        super::shared::HeldFences<'_>,
    )> {
        validate_id("subject id", subject)?;
        let name = self.names.subject(subject);
        let stripe = self.subject_locks[stripe(&name)].exclusive();
        let custody = lock(&self.custody_lock);
        self.check_open()?;
        let fences = self.hold_fences([&name])?;
        Ok((name, stripe, custody, fences))
    }

    /// Gives `subject` a new key, re-encrypts every field of its records
    /// under it (same AAD binding: same region, collection, record and
    /// field), and destroys every older key version, in one atomic write.
    pub fn rotate_subject(&self, caller: &Caller, subject: &str) -> Result<SubjectRotation> {
        self.audited(caller, Operation::Custody, "rotate_subject_key", || {
            self.rotate_subject_authorized(caller, subject)
        })
    }

    fn rotate_subject_authorized(&self, caller: &Caller, subject: &str) -> Result<SubjectRotation> {
        let (name, _stripe, _custody, fences) = self.lock_subject_custody(subject)?;
        let rows = self.subject_key_rows(&name)?;
        let Some(&(latest, _)) = rows.last() else {
            return Err(Error::NotFound("subject (it has no key)".into()));
        };
        let kr = self.keyring();
        let new_version = latest
            .max(kr.erased_through(&name).unwrap_or(0))
            .checked_add(1)
            .ok_or(Error::Integrity)?;
        let new_key = Arc::new(SubjectKeys::new(new_version, Key256::random()));

        let mut ws = WriteSet::new();
        let (mut records, mut fields) = (0u64, 0u64);
        for (index_key, record_key, bytes) in self.subject_records(&name)? {
            let Some(bytes) = bytes else {
                ws.delete(Table::SubjectRecords, index_key);
                continue;
            };
            let (collection, record_name) = split_record_key(&record_key)?;
            // Any record that fails its checks stops the rotation before
            // anything is written or destroyed.
            let opened = self.open_record(collection, &record_name, None, &bytes)?;
            let mut plain = Vec::with_capacity(opened.stored.fields.len());
            for sf in &opened.stored.fields {
                plain.push((
                    sf.name.as_str(),
                    self.open_stored_field(&opened, collection, sf)?,
                ));
            }
            fields += plain.len() as u64;
            records += 1;
            let ids = Ids {
                collection,
                id: &opened.id,
                name: &record_name,
                subject_id: &opened.subject_id,
                subject: &name,
            };
            // The record keeps its write time: a key rotation does not
            // extend its retention.
            let value =
                self.seal_record(&new_key, &ids, opened.stored.written_ms, plain.into_iter());
            if self.is_shared() {
                // Not over a change another server made meanwhile (the
                // record given to another subject, or deleted).
                ws.expect(Table::Records, record_key.clone(), Some(bytes.clone()));
            }
            ws.put(Table::Records, record_key.clone(), value);
        }
        {
            let _create = lock(&self.create_lock);
            let kr = self.keyring();
            let wrapped = wrap_subject_key(&kr, &name, new_version, new_key.key())?;
            let root_version = wrapping_version(&wrapped)?;
            let bucket = self.names.bucket(&name);
            ws.put(
                Table::SubjectKeys,
                subject_key_id(bucket, &name, new_version),
                wrapped,
            );
            for (v, _) in &rows {
                ws.delete(Table::SubjectKeys, subject_key_id(bucket, &name, *v));
            }
            if self.is_shared() {
                // Wrapped under this keyring: written only if it is still
                // the stored one (an erasure elsewhere in the bucket).
                ws.expect_keyring(kr.generation());
            }
            // Writes of the subject other servers made before this one
            // fail (they may be under a version it destroys).
            fences.bump(&mut ws);
            let mut ev = Event::of(caller, "rotate_subject_key");
            ev.subjects.push(hex::encode(kr.subject_pseudonym(subject)));
            ev.detail = Some(format!(
                "key version {new_version}; {records} records, {fields} fields re-encrypted"
            ));
            self.wraps
                .commit(root_version, 1, ws, |ws| self.commit(ws, ev))?;
        }
        self.cache.evict_subject(&name);
        self.cache.insert(&name, new_key);
        self.counters
            .fields_encrypted
            .fetch_add(fields, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(new_version, records, principal = %caller.principal.name, "subject key rotated");
        Ok(SubjectRotation {
            new_version,
            records,
            fields,
        })
    }

    /// Crypto-shreds `subject` by destroying key material that exists only
    /// in the keyring:
    ///
    /// 1. the keyring records the erasure and gains a new epoch of the
    ///    subject's shred-bucket key (saved; both epochs open);
    /// 2. one atomic write deletes the subject's key rows, records and index
    ///    entries, re-wraps every other subject key of the bucket under the
    ///    new epoch, and stores the signed receipt with the audit event;
    /// 3. the keyring drops the old epoch (saved: the commit point of the
    ///    destruction); every copy of the bucket's old wrapped keys, in any
    ///    backup, is now unopenable;
    /// 4. the affected key ranges are compacted, so the deleted bytes leave
    ///    the data files.
    ///
    /// A crash after 1 leaves two epochs in the keyring: the next unseal
    /// finishes 2 (without the records, which stay unreadable: their key is
    /// refused) and 3. No subject other than the erased one is ever without
    /// a key that opens it.
    pub fn erase_subject(&self, caller: &Caller, subject: &str) -> Result<ErasureReceipt> {
        self.audited(caller, Operation::Erase, "erase_subject", || {
            self.erase_subject_authorized(caller, subject)
        })
    }

    fn erase_subject_authorized(&self, caller: &Caller, subject: &str) -> Result<ErasureReceipt> {
        let started = std::time::Instant::now();
        let (name, _stripe, _custody, fences) = self.lock_subject_custody(subject)?;
        let bucket = self.names.bucket(&name);
        let rows = self.subject_key_rows(&name)?;
        let records = self.subject_records(&name)?;
        let through = rows.last().map_or(0, |(v, _)| *v);
        // No subject key is made (in this bucket or any) until the bucket
        // has moved to its new epoch.
        let create = lock(&self.create_lock);
        // An earlier erasure this session could not finish (a failed save
        // or batch) is finished first: each erasure destroys its own epoch.
        self.finish_unfinished_buckets(caller)?;

        // 1. The erasure and the bucket's new epoch, in the keyring.
        let mut kr = Keyring::clone(&self.keyring());
        let already = kr.erased_through(&name).unwrap_or(0);
        if through > already {
            kr.record_erasure(&name, through);
        }
        let (old_epoch, new_epoch) = kr.begin_shred(bucket).map_err(custody_error)?;
        let (kr, saved) = self.save_keyring(kr)?;
        self.swap_keyring(kr);
        self.cache.evict_subject(&name);
        saved?;

        // 2. One atomic write. On a shared store another server may have
        // changed what it covers meanwhile (a rotation in the bucket, a
        // record given to another subject, its own keyring save): then it
        // is built again over what is stored now, a few times, while this
        // erasure still holds its locks.
        let mut records = records;
        let mut attempt = 0;
        let (receipt, deleted, deleted_keys, index_rows, moved) = loop {
            let kr = self.keyring();
            let (mut ws, moved) = self.move_bucket(&kr, bucket, Some(&name))?;
            // Step 3 drops the old epoch from an fsynced file: these re-wraps
            // must be on disk first, whatever `danger_unsynced_writes` says.
            ws.must_sync();
            let mut deleted = 0u64;
            let mut deleted_keys = Vec::new();
            let mut index_rows = Vec::new();
            for (index_key, record_key, bytes) in records {
                // Index rows go whether or not the record could be read.
                index_rows.extend(self.unindex_record(&mut ws, &record_key)?);
                if let Some(bytes) = bytes {
                    if self.is_shared() {
                        // Not a record another server gave to another subject
                        // meanwhile.
                        ws.expect(Table::Records, record_key.clone(), Some(bytes));
                    }
                    ws.delete(Table::Records, record_key.clone());
                    deleted_keys.push(record_key);
                    deleted += 1;
                }
                ws.delete(Table::SubjectRecords, index_key);
            }
            let receipt = ErasureReceipt::sign(
                &kr,
                subject,
                through.max(already),
                deleted,
                now_secs(),
                crate::keys::Shredded {
                    bucket,
                    epoch: old_epoch,
                    keys_rewrapped: moved.rewrapped,
                },
            );
            let mut receipt_key = receipt.erased_at.to_be_bytes().to_vec();
            receipt_key.extend_from_slice(&receipt.id);
            ws.put(Table::Receipts, receipt_key, receipt.encode());
            let mut ev = Event::of(caller, "erase_subject");
            ev.subjects.push(hex::encode(receipt.subject));
            ev.detail = Some(format!(
                "receipt {}; {} records deleted; key versions 1..={} destroyed with epoch {} of \
                 shred bucket {} ({} keys of {} other subjects re-wrapped to epoch {}); backups \
                 made before this erasure can open no key of shred bucket {} with this keyring; \
                 keyring generation {}",
                hex::encode(receipt.id),
                deleted,
                receipt.key_versions_destroyed,
                old_epoch,
                bucket,
                moved.rewrapped,
                moved.subjects,
                new_epoch,
                bucket,
                kr.generation() + 1,
            ));
            let root_version = kr.current_root()?.0;
            if self.is_shared() {
                // The bucket was re-wrapped under the keyring this erasure saved:
                // written only if no other server saved another since.
                ws.expect_keyring(kr.generation());
            }
            // Writes of the subject other servers made before this one fail.
            fences.bump(&mut ws);
            match self
                .wraps
                .commit(root_version, moved.rewrapped, ws, |ws| self.commit(ws, ev))
            {
                Ok(_) => break (receipt, deleted, deleted_keys, index_rows, moved),
                Err(Error::Conflict) if self.is_shared() && attempt < ERASE_ATTEMPTS => {
                    attempt += 1;
                    self.follow_keyring_locked()?;
                    records = self.subject_records(&name)?;
                }
                Err(e) => return Err(e),
            }
        };

        // 3. The old epoch leaves the keyring: the commit point. Another
        // server's keyring save meanwhile: taken up, and saved over.
        let mut attempt = 0;
        loop {
            match self.finish_bucket(bucket) {
                Ok(_) => break,
                Err(Error::Conflict) if self.is_shared() && attempt < ERASE_ATTEMPTS => {
                    attempt += 1;
                    self.follow_keyring_locked()?;
                }
                Err(e) => return Err(e),
            }
        }
        drop(create);
        let shredded = started.elapsed();

        // 4. The deleted bytes leave the data files.
        self.compact_after_erasure(bucket, &name, &deleted_keys);
        self.compact_keys(Table::Index, &index_rows);
        let compacted = started.elapsed() - shredded;
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counters
            .erasures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counters
            .erasure_shred_micros
            .fetch_add(micros(shredded), std::sync::atomic::Ordering::Relaxed);
        self.counters
            .erasure_compaction_micros
            .fetch_add(micros(compacted), std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            receipt = %hex::encode(receipt.id),
            records = deleted,
            key_versions = through,
            bucket,
            destroyed_epoch = old_epoch,
            rewrapped = moved.rewrapped,
            shred_ms = shredded.as_millis(),
            compaction_ms = compacted.as_millis(),
            principal = %caller.principal.name,
            "subject erased"
        );
        Ok(receipt)
    }

    /// The writes that move `bucket` to its newest epoch: every subject key
    /// row of the bucket re-wrapped (under the current root key too), the
    /// rows of `erased` and of subjects the keyring records as erased
    /// deleted. A row that cannot be unwrapped (already dead: its root key
    /// is gone) is left and counted.
    fn move_bucket(
        &self,
        kr: &Keyring,
        bucket: u16,
        erased: Option<&SubjectName>,
    ) -> Result<(WriteSet, BucketMove)> {
        let mut ws = WriteSet::new();
        let mut moved = BucketMove::default();
        let mut rewrapper = Rewrapper::new(kr);
        let mut last: Option<SubjectName> = None;
        for (k, v) in self
            .store
            .scan_prefix(Table::SubjectKeys, &bucket_prefix(bucket))?
        {
            let (b, subject, version) = match parse_subject_key_id(&k) {
                Ok(parsed) if parsed.0 == bucket && self.names.bucket(&parsed.1) == bucket => {
                    parsed
                }
                _ => {
                    moved.unreadable += 1;
                    tracing::warn!(
                        bucket,
                        "erasure: a malformed subject key row; left as it is"
                    );
                    continue;
                }
            };
            debug_assert_eq!(b, bucket);
            if Some(&subject) == erased {
                ws.delete(Table::SubjectKeys, k);
                continue;
            }
            match rewrapper.rewrap(&subject, version, &v) {
                Ok(Some(rewrapped)) => {
                    if self.is_shared() {
                        // A rotation of that subject on another server may
                        // have destroyed this version since: not brought
                        // back (the erasure's write fails and is built
                        // again).
                        ws.expect(Table::SubjectKeys, k.clone(), Some(v.clone()));
                    }
                    ws.put(Table::SubjectKeys, k, rewrapped);
                    moved.rewrapped += 1;
                    if last != Some(subject) {
                        moved.subjects += 1;
                        last = Some(subject);
                    }
                }
                Ok(None) => {}
                Err(Error::SubjectErased) => ws.delete(Table::SubjectKeys, k),
                Err(e) => {
                    moved.unreadable += 1;
                    tracing::warn!(error = %e, bucket, "erasure: a subject key could not be unwrapped; left as it is");
                }
            }
        }
        Ok((ws, moved))
    }

    /// Drops every epoch of `bucket` but the newest and saves the keyring.
    /// The caller holds `create_lock`.
    pub(super) fn finish_bucket(&self, bucket: u16) -> Result<Vec<u32>> {
        let mut kr = Keyring::clone(&self.keyring());
        let destroyed = kr.finish_shred(bucket);
        let (kr, saved) = self.save_keyring_even_if_closed(kr)?;
        self.swap_keyring(kr);
        saved?;
        Ok(destroyed)
    }

    /// Finishes the erasures a crash interrupted (buckets holding two
    /// epochs): their buckets are moved to the newest epoch and the older
    /// one destroyed. Runs when an engine opens, before any request.
    pub(super) fn finish_interrupted_erasures(&self) -> Result<()> {
        if self.keyring().unfinished_shreds().is_empty() {
            return Ok(());
        }
        let _custody = lock(&self.custody_lock);
        let _create = lock(&self.create_lock);
        self.finish_unfinished_buckets(&Caller::internal("vault"))
    }

    /// Moves every bucket that holds two epochs to its newest and destroys
    /// the older, each with an audited `finish_erasure` event of the vault
    /// (naming `caller`'s request, if any). The caller holds `custody_lock`
    /// and `create_lock`.
    fn finish_unfinished_buckets(&self, caller: &Caller) -> Result<()> {
        for bucket in self.keyring().unfinished_shreds() {
            let kr = self.keyring();
            let (mut ws, moved) = self.move_bucket(&kr, bucket, None)?;
            ws.must_sync();
            // The vault's own work, not the request's (which has its own
            // event): named in the detail.
            let mut ev = Event::of(&Caller::internal("vault"), "finish_erasure");
            let root_version = kr.current_root()?.0;
            let destroyed_keyring = kr.generation() + 1;
            ev.detail = Some(format!(
                "an interrupted erasure finished{}: shred bucket {bucket} moved to epoch {} \
                 ({} keys re-wrapped, {} unreadable), older epochs destroyed; keyring \
                 generation {destroyed_keyring}",
                match &caller.request_id {
                    Some(id) => format!(" before request {id}"),
                    None => String::new(),
                },
                kr.shred_epoch(bucket).unwrap_or(0),
                moved.rewrapped,
                moved.unreadable,
            ));
            if self.is_shared() {
                ws.expect_keyring(kr.generation());
            }
            self.wraps
                .commit(root_version, moved.rewrapped, ws, |ws| self.commit(ws, ev))?;
            let destroyed = self.finish_bucket(bucket)?;
            tracing::warn!(bucket, ?destroyed, "an interrupted erasure finished");
        }
        Ok(())
    }

    /// Compacts what an erasure deleted (logged, not fatal: the keys that
    /// opened those bytes are destroyed either way).
    fn compact_after_erasure(&self, bucket: u16, subject: &SubjectName, records: &[Vec<u8>]) {
        let start = bucket_prefix(bucket).to_vec();
        let end = match bucket.checked_add(1) {
            Some(next) => bucket_prefix(next).to_vec(),
            None => vec![0xFF; 3],
        };
        let mut index_end = subject.to_vec();
        index_end.extend_from_slice(&[0xFF; 128]);
        let mut ranges = vec![
            (Table::SubjectKeys, start, end),
            (Table::SubjectRecords, subject.to_vec(), index_end),
        ];
        ranges.extend(
            records
                .iter()
                .map(|k| (Table::Records, k.clone(), k.clone())),
        );
        for (table, start, end) in ranges {
            if let Err(e) = self.store.compact_range(table, &start, &end) {
                tracing::warn!(error = %e, table = table.name(), "erasure: compaction failed");
            }
        }
    }

    /// One page of `subject`'s access ledger: the events naming it, from
    /// log index `from`, at most `limit` (1 to [`MAX_LEDGER_PAGE`], and
    /// [`MAX_LEDGER_BYTES`] of events), with inclusion proofs in a
    /// checkpoint signed now (`tree_size` 0) or in the stored checkpoint of
    /// `tree_size` events. The request is an event too (naming the
    /// subject), written before the page is returned.
    pub fn access_ledger(
        &self,
        caller: &Caller,
        subject: &str,
        from: u64,
        limit: usize,
        tree_size: u64,
    ) -> Result<Ledger> {
        self.audited(caller, Operation::Export, "access_ledger", || {
            validate_id("subject id", subject)?;
            self.check_open()?;
            let limit = limit.clamp(1, MAX_LEDGER_PAGE);
            let pseudonym = self.keyring().subject_pseudonym(subject);
            let checkpoint = match tree_size {
                0 => self.checkpoint()?,
                n => self.audit().stored_checkpoint(n)?.ok_or_else(|| {
                    Error::InvalidArgument(format!("there is no checkpoint of tree size {n}"))
                })?,
            };
            let (size, _) =
                crate::audit::checkpoint::parse(checkpoint.as_bytes()).ok_or(Error::Integrity)?;
            let mut found = self
                .audit()
                .subject_events(&pseudonym, from, size, limit + 1)?;
            // A page stops at `limit` events or at the byte budget (always
            // at least one event, which is far below the message limit).
            let mut bytes = 0;
            let fits = found
                .iter()
                .take(limit)
                .take_while(|(_, event)| {
                    bytes += event.len();
                    bytes <= MAX_LEDGER_BYTES
                })
                .count()
                .max(1)
                .min(found.len());
            let next = found.get(fits).map(|(index, _)| *index);
            found.truncate(fits);
            let indices: Vec<u64> = found.iter().map(|(index, _)| *index).collect();
            let proofs = self.audit().inclusion_proofs(&indices, size)?;
            let entries: Vec<LedgerEntry> = found
                .into_iter()
                .zip(proofs)
                .map(|((index, event), proof)| LedgerEntry {
                    index,
                    event,
                    proof,
                })
                .collect();
            let mut ev = Event::of(caller, "access_ledger");
            ev.subjects.push(hex::encode(pseudonym));
            ev.detail = Some(format!(
                "{} events from index {from}, proved in the tree of size {size}",
                entries.len()
            ));
            self.commit(WriteSet::new(), ev)?;
            Ok(Ledger {
                pseudonym,
                checkpoint,
                entries,
                next,
            })
        })
    }
}

/// What moving a shred bucket to a new epoch did.
#[derive(Debug, Default, Clone, Copy)]
struct BucketMove {
    /// Key rows re-wrapped.
    rewrapped: u64,
    /// Distinct subjects among them.
    subjects: u64,
    /// Rows that could not be unwrapped (left as they were).
    unreadable: u64,
}

/// Most entries in one page of an access ledger.
pub const MAX_LEDGER_PAGE: usize = 100;
/// Most bytes of events in one page of an access ledger: the audit log's
/// page budget (the gRPC message limit is 8 MiB; proofs and framing take
/// the rest).
pub const MAX_LEDGER_BYTES: usize = crate::audit::MAX_PAGE_BYTES;

/// One page of a subject's access ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// The subject's pseudonym, as events name it.
    pub pseudonym: [u8; 32],
    /// The signed checkpoint the proofs are against.
    pub checkpoint: String,
    /// The events, oldest first.
    pub entries: Vec<LedgerEntry>,
    /// The index the next page starts at, if there is one.
    pub next: Option<u64>,
}

/// One event of a ledger, with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Its index in the log.
    pub index: u64,
    /// The event as stored (the leaf).
    pub event: Vec<u8>,
    /// Its inclusion proof, from the leaf up.
    pub proof: Vec<crate::audit::merkle::Hash>,
}

/// Maps a refused key-state change to the caller's error.
pub(super) fn custody_error(e: KeyringError) -> Error {
    match e {
        KeyringError::RootKeyUnavailable(v) => Error::NotFound(format!("root key version {v}")),
        e => Error::FailedPrecondition(e.to_string()),
    }
}
