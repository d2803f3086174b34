//! Several servers over one store (PostgreSQL): what each server keeps in
//! memory follows what another server changed.
//!
//! - **The keyring.** A change saved through one server (rotation,
//!   erasure, index-key rotation) raises the stored keyring's generation;
//!   every other server sees it within [`SYNC_INTERVAL`] (its background
//!   thread asks), reopens the stored keyring with its own unseal key and
//!   swaps it in, dropping every cached subject key. Two servers changing
//!   the keyring at once cannot both save: the store takes a save only
//!   over the generation before (the loser answers `ABORTED` and reloads).
//!   A keyring its unseal key no longer opens (a rekey through another
//!   server) seals this server.
//! - **Collections** created through another server are read from the
//!   store when a name is not known here; a schema never changes once made.
//! - **Honey subjects** are reloaded every [`SYNC_INTERVAL`].
//! - **The access policy.** A policy reloaded through one server (its own
//!   file, on SIGHUP or `ReloadPolicy`) is stored as the shared policy,
//!   numbered after the one stored; every other server takes it up within
//!   [`SYNC_INTERVAL`] (checked against its own configured credentials,
//!   audited as a reload) and at unseal. The last reload, through
//!   whichever server, is in force everywhere.
//! - **Background jobs** run on the server that leads (`Store::lead`);
//!   their records are read from the store at each step, and each step's
//!   write is conditional on the record it read.
//! - **Subject locks across servers: fences.** What a server holds
//!   exclusively within itself for some subjects (a rotation or erasure of
//!   one, a retention purge or blind-index rebuild batch of their records)
//!   it also holds against the other servers: the subjects' fences
//!   (`Store::hold_fences`), taken after its own stripes, and its write
//!   moves their epochs on. A write of records expects the epochs of its
//!   subjects' fences as this server knew them before it read their keys
//!   (and of the records' current owners, learnt from the records; the
//!   holders' own writes of records are conditional on the records as
//!   they read them) ([`Engine::fence_expectations`]): it fails (`ABORTED`)
//!   if another server holds one of them when it commits, or moved one
//!   on since. So no write made under a key version that a rotation on
//!   another server destroyed, or of a record that a purge or an erasure
//!   there deleted, or with index rows that a rebuild batch there
//!   replaced, lands after it. Epochs are cached here; a failed write
//!   forgets them, so the next attempt reads them again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{lock, Collection, Engine, SubjectName, Wait, SUBJECT_STRIPES};
use crate::keys::{Keyring, KeyringError};
use crate::storage::{FenceHold, Table, WriteSet, FENCES, INDEX_FENCE};
use crate::{Error, Result};

/// The `Meta` key of the shared policy.
const POLICY_KEY: &[u8] = b"shared_policy";

/// The policy last reloaded through any server, as stored.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedPolicy {
    /// One more than the one it replaced.
    seq: u64,
    /// Where the reloading server read it (for events).
    source: String,
    /// Its text.
    text: String,
}

impl SharedPolicy {
    fn decode(bytes: &[u8]) -> Result<SharedPolicy> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Storage(format!("the shared policy record does not decode: {e}")))
    }
}

/// A fence whose epoch this server does not know.
const UNKNOWN: u64 = u64::MAX;

/// The epochs of the fences as this server last read them.
#[derive(Debug)]
pub(super) struct FenceEpochs(Vec<AtomicU64>);

impl FenceEpochs {
    /// None known (on a store of its own, none ever asked).
    pub(super) fn new(shared: bool) -> Self {
        let n = if shared { INDEX_FENCE as usize + 1 } else { 0 };
        FenceEpochs((0..n).map(|_| AtomicU64::new(UNKNOWN)).collect())
    }

    /// Forgets every epoch (a write failed: one may have moved on).
    pub(super) fn forget(&self) {
        for e in &self.0 {
            e.store(UNKNOWN, Ordering::Relaxed);
        }
    }
}

/// The fence of a subject: its storage name (a keyed hash) spread over
/// [`FENCES`], as [`super::stripe`] spreads it over the stripes (a fence
/// lies within one stripe).
pub(super) fn fence(subject: &SubjectName) -> u32 {
    const _: () = assert!((FENCES as usize).is_multiple_of(SUBJECT_STRIPES));
    (super::name_number(subject) % u64::from(FENCES)) as u32
}

/// Fences held by this server (a [`FenceHold`]); once let go, their epochs
/// are read again here (this server's own write moved them on).
pub(super) struct HeldFences<'a> {
    fences: Vec<u32>,
    epochs: &'a FenceEpochs,
    hold: FenceHold,
}

impl HeldFences<'_> {
    /// Whether `subject`'s fence is held.
    pub(super) fn holds(&self, subject: &SubjectName) -> bool {
        self.fences.binary_search(&fence(subject)).is_ok()
    }

    /// Makes `ws` move the held fences on, and be written only while they
    /// are still held.
    pub(super) fn bump(&self, ws: &mut WriteSet) {
        if let Some(holder) = self.hold.holder() {
            ws.bump_fences(self.fences.iter().copied(), Some(holder));
        }
    }
}

impl Drop for HeldFences<'_> {
    fn drop(&mut self) {
        for &f in &self.fences {
            if let Some(e) = self.epochs.0.get(f as usize) {
                e.store(UNKNOWN, Ordering::Relaxed);
            }
        }
    }
}

/// How often a server of a shared store looks for another's changes
/// (keyring, audit appends, leadership).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

impl Engine {
    /// Whether other servers share this engine's store.
    pub fn is_shared(&self) -> bool {
        self.store.shared()
    }

    /// The fences of `subjects` with their epochs as this server knows
    /// them (read from the store where it does not), for a write of those
    /// subjects' records ([`crate::storage::WriteSet::expect_fences`]):
    /// called before the keys and records the write depends on are read.
    /// Nothing on a store of its own.
    pub(super) fn fence_expectations<'s>(
        &self,
        subjects: impl IntoIterator<Item = &'s SubjectName>,
    ) -> Result<Vec<(u32, u64)>> {
        if !self.is_shared() {
            return Ok(Vec::new());
        }
        let mut fences: Vec<u32> = subjects.into_iter().map(fence).collect();
        fences.sort_unstable();
        fences.dedup();
        let known = |f: u32| self.fence_epochs.0[f as usize].load(Ordering::Relaxed);
        let unknown: Vec<u32> = fences
            .iter()
            .copied()
            .filter(|&f| known(f) == UNKNOWN)
            .collect();
        if !unknown.is_empty() {
            for (f, e) in unknown.iter().zip(self.store.fence_epochs(&unknown)?) {
                self.fence_epochs.0[*f as usize].store(e, Ordering::Relaxed);
            }
        }
        Ok(fences.into_iter().map(|f| (f, known(f))).collect())
    }

    /// The index key's fence with its epoch as this server knows it, for a
    /// write that makes blind-index rows on a shared store (nothing on a
    /// store of its own). Read from the store where it is not known, and
    /// then the stored keyring is taken up first if it is newer, so no row
    /// is made under an index key a rotation elsewhere replaced before the
    /// epoch was read. `None` (with [`Wait::Never`]) if that has to be done.
    pub(super) fn index_fence_expectation(&self, wait: Wait) -> Result<Option<Vec<(u32, u64)>>> {
        if !self.is_shared() {
            return Ok(Some(Vec::new()));
        }
        let slot = &self.fence_epochs.0[INDEX_FENCE as usize];
        let known = slot.load(Ordering::Relaxed);
        if known != UNKNOWN {
            return Ok(Some(vec![(INDEX_FENCE, known)]));
        }
        let epoch = self.store.fence_epochs(&[INDEX_FENCE])?[0];
        let stored = self.keyring_file.store.generation()?;
        if stored.is_some_and(|g| g > self.keyring().generation()) {
            if wait == Wait::Never {
                return Ok(None);
            }
            self.follow_keyring()?;
        }
        slot.store(epoch, Ordering::Relaxed);
        Ok(Some(vec![(INDEX_FENCE, epoch)]))
    }

    /// Holds the index key's fence against the other servers (an index-key
    /// rotation, which holds every stripe and custody already).
    pub(super) fn hold_index_fence(&self) -> Result<HeldFences<'_>> {
        self.hold(vec![INDEX_FENCE])
    }

    /// Forgets the fence epochs this server knows: after a write failed
    /// (`Error::Conflict`), one of them may have moved on.
    pub(super) fn forget_fences(&self) {
        self.fence_epochs.forget();
    }

    /// Holds the fences of `subjects` against the other servers (see the
    /// module's notes); the caller holds their stripes exclusively already.
    /// On a store of its own, nothing is held.
    pub(super) fn hold_fences<'s>(
        &self,
        subjects: impl IntoIterator<Item = &'s SubjectName>,
    ) -> Result<HeldFences<'_>> {
        let mut fences: Vec<u32> = subjects.into_iter().map(fence).collect();
        fences.sort_unstable();
        fences.dedup();
        self.hold(fences)
    }

    /// Holds `fences` (sorted, distinct) on a shared store; nothing on a
    /// store of its own.
    fn hold(&self, fences: Vec<u32>) -> Result<HeldFences<'_>> {
        let hold = if self.is_shared() {
            self.store.hold_fences(&fences)?
        } else {
            FenceHold::none()
        };
        Ok(HeldFences {
            fences,
            epochs: &self.fence_epochs,
            hold,
        })
    }

    /// On a shared store: takes up the stored keyring if another server
    /// saved a newer one. `Ok(true)` if it did. `Err(Error::Sealed)` if
    /// this server's unseal key no longer opens it (rekeyed elsewhere).
    pub fn follow_keyring(&self) -> Result<bool> {
        let Some(stored) = self.keyring_file.store.generation()? else {
            return Ok(false);
        };
        if stored <= self.keyring().generation() {
            return Ok(false);
        }
        // Custody operations here neither run nor save meanwhile.
        let _custody = lock(&self.custody_lock);
        self.take_up_stored_keyring(Some(&self.create_lock))
    }

    /// [`Engine::follow_keyring`] for a custody operation that holds
    /// `custody_lock` and `create_lock` already (an erasure whose write
    /// met another server's keyring save).
    pub(super) fn follow_keyring_locked(&self) -> Result<bool> {
        self.take_up_stored_keyring(None)
    }

    /// Takes up the stored keyring if it is newer; the caller holds
    /// `custody_lock`, and `create_lock` unless it is given (then it is
    /// taken for the swap).
    fn take_up_stored_keyring(&self, create: Option<&std::sync::Mutex<()>>) -> Result<bool> {
        let sealed = self
            .keyring_file
            .store
            .read()?
            .ok_or_else(|| Error::Storage("the stored keyring disappeared".into()))?;
        let keyring = match Keyring::unseal(&sealed, &self.keyring_file.unseal_key, &self.region) {
            Ok(k) => k,
            Err(KeyringError::WrongUnsealKey) => {
                tracing::warn!(
                    "the stored keyring was rekeyed through another server; this server seals"
                );
                return Err(Error::Sealed);
            }
            Err(e) => return Err(e.into()),
        };
        if keyring.generation() <= self.keyring().generation() {
            return Ok(false);
        }
        let honey = super::honey::load(self.store.as_ref())?;
        let generation = keyring.generation();
        {
            let _create = create.map(lock);
            self.swap_keyring(keyring);
            // Keys cached under the old keyring may belong to a subject
            // erased since, or be wrapped under a root now destroyed.
            self.cache.clear();
        }
        *self.honey.write().unwrap_or_else(|p| p.into_inner()) = honey;
        tracing::info!(generation, "took up the keyring another server saved");
        Ok(true)
    }

    /// On a shared store: hands `policy`, just reloaded from this server's
    /// file, to the other servers (stored as the newest shared policy).
    /// Nothing on a store of its own, or for the built-in policy.
    pub fn publish_policy(&self, policy: &crate::policy::Policy) -> Result<()> {
        if !self.is_shared() || policy.text().is_empty() {
            return Ok(());
        }
        for _ in 0..3 {
            let stored = self.store.get(Table::Meta, POLICY_KEY)?;
            let seq = match &stored {
                Some(b) => SharedPolicy::decode(b)?.seq.saturating_add(1),
                None => 1,
            };
            let record = SharedPolicy {
                seq,
                source: policy.source().to_owned(),
                text: policy.text().to_owned(),
            };
            let bytes = serde_json::to_vec(&record).map_err(|e| Error::Storage(e.to_string()))?;
            let mut ws = WriteSet::new();
            ws.expect(Table::Meta, POLICY_KEY.to_vec(), stored);
            ws.put(Table::Meta, POLICY_KEY.to_vec(), bytes);
            match self.store.write(ws) {
                Ok(()) => {
                    self.policy_seq.fetch_max(seq, Ordering::Relaxed);
                    return Ok(());
                }
                // Another server's reload at the same moment: go after it.
                Err(Error::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict)
    }

    /// On a shared store: takes up the policy another server reloaded
    /// last, if it is newer than what this server took up or handed on and
    /// not the one in force already; records it as a reload (done, or
    /// refused: the policy in force stays). Returns whether it did.
    pub(super) fn follow_policy(&self) -> Result<bool> {
        if !self.is_shared() {
            return Ok(false);
        }
        let Some(bytes) = self.store.get(Table::Meta, POLICY_KEY)? else {
            return Ok(false);
        };
        let shared = SharedPolicy::decode(&bytes)?;
        if self.policy_seq.fetch_max(shared.seq, Ordering::Relaxed) >= shared.seq
            || self.policy.current().text() == shared.text
        {
            return Ok(false);
        }
        let taken = self
            .policy
            .install_then(&shared.text, &shared.source, |result, in_force| {
                let refused = if result.is_ok() { "" } else { "refused; " };
                self.record(
                    &crate::policy::Caller::internal("vault"),
                    "reload_policy",
                    Some(format!(
                        "{refused}reloaded through another server; in force: {}",
                        in_force.identity()
                    )),
                    result,
                );
            });
        match taken {
            Ok(_) => {
                tracing::info!(
                    seq = shared.seq,
                    "took up the policy another server reloaded"
                );
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "the policy another server reloaded is refused here; the one in force stays");
                Ok(false)
            }
        }
    }

    /// On a shared store: the collection `name` as another server stored
    /// it, now known here too.
    pub(super) fn load_shared_collection(&self, name: &str) -> Result<Option<Arc<Collection>>> {
        if !self.is_shared() {
            return Ok(None);
        }
        let Some(json) = self.store.get(Table::Collections, name.as_bytes())? else {
            return Ok(None);
        };
        let c: Collection = serde_json::from_slice(&json).map_err(|_| Error::Integrity)?;
        if c.name != name {
            return Err(Error::Integrity);
        }
        let c = Arc::new(c);
        self.collections
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| Arc::clone(&c));
        Ok(Some(c))
    }

    /// On a shared store: every stored collection, known here too.
    pub(super) fn load_shared_collections(&self) -> Result<()> {
        if !self.is_shared() {
            return Ok(());
        }
        let mut found = Vec::new();
        for (_, v) in self.store.scan_prefix(Table::Collections, b"")? {
            let c: Collection = serde_json::from_slice(&v).map_err(|_| Error::Integrity)?;
            found.push(c);
        }
        let mut known = self.collections.write().unwrap_or_else(|p| p.into_inner());
        for c in found {
            known.entry(c.name.clone()).or_insert_with(|| Arc::new(c));
        }
        Ok(())
    }

    /// The background thread's look at a shared store: another server's
    /// keyring (whether it took one up), the audit events other servers
    /// appended, and whether this server leads the background jobs now.
    pub(super) fn sync_shared(&self) -> Result<(bool, bool)> {
        let changed = self.follow_keyring()?;
        if let Err(e) = self.follow_policy() {
            tracing::warn!(error = %e, "could not take up the policy another server reloaded");
        }
        if let Err(e) = self.wraps.refresh(self.store.as_ref()) {
            tracing::warn!(error = %e, "could not read the other servers' wrap counts");
        }
        // Honey subjects planted through another server.
        let honey = super::honey::load(self.store.as_ref())?;
        *self.honey.write().unwrap_or_else(|p| p.into_inner()) = honey;
        if let Err(e) = self.audit.refresh() {
            tracing::warn!(error = %e, "could not take in other servers' audit events");
        }
        Ok((changed, self.store.lead()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_policy_record_that_does_not_decode_is_an_error() {
        for bytes in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            br#"{"seq":1}"#,
            br#"{"seq":-1,"source":"a","text":"b"}"#,
            br#"{"seq":1,"source":"a","text":"b","more":0}"#,
        ] {
            assert!(
                matches!(SharedPolicy::decode(bytes), Err(Error::Storage(_))),
                "{bytes:?}"
            );
        }
        let ok = SharedPolicy::decode(br#"{"seq":2,"source":"f","text":"t"}"#).unwrap();
        assert_eq!(
            (ok.seq, ok.source.as_str(), ok.text.as_str()),
            (2, "f", "t")
        );
    }
}
