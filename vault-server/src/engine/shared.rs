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
//! - **Background jobs** run on the server that leads (`Store::lead`);
//!   their records are read from the store at each step, and each step's
//!   write is conditional on the record it read.

use std::sync::Arc;
use std::time::Duration;

use super::{lock, Collection, Engine};
use crate::keys::{Keyring, KeyringError};
use crate::storage::Table;
use crate::{Error, Result};

/// How often a server of a shared store looks for another's changes
/// (keyring, audit appends, leadership).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

impl Engine {
    /// Whether other servers share this engine's store.
    pub fn is_shared(&self) -> bool {
        self.store.shared()
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
            let _create = lock(&self.create_lock);
            self.swap_keyring(keyring);
            // Keys cached under the old keyring may belong to a subject
            // erased since, or be wrapped under a root now destroyed.
            self.cache.clear();
        }
        *self.honey.write().unwrap_or_else(|p| p.into_inner()) = honey;
        tracing::info!(generation, "took up the keyring another server saved");
        Ok(true)
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
        // Honey subjects planted through another server.
        let honey = super::honey::load(self.store.as_ref())?;
        *self.honey.write().unwrap_or_else(|p| p.into_inner()) = honey;
        if let Err(e) = self.audit.refresh() {
            tracing::warn!(error = %e, "could not take in other servers' audit events");
        }
        Ok((changed, self.store.lead()?))
    }
}
