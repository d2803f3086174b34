//! How many keys each root key version has sealed.
//!
//! A root key seals (wraps) subject keys with AES-256-GCM under random
//! 96-bit nonces, and NIST SP 800-38D bounds random nonces at 2^32
//! encryptions per key. The engine counts every wrap per root version in
//! the data folder (`Table::Meta`, `wraps/` ‖ version, a u64 big-endian),
//! in the same write as the wrapped keys it counts. Past the configured
//! bound (`[keys] rotate_root_after_wraps`) the vault asks custodians for a
//! root rotation (`operator status`, the server log); at 2^32 it refuses
//! to wrap under that version at all.
//!
//! The count only rises: a write that fails after counting leaves it
//! higher than the truth, never lower. Writes that wrap keys are
//! serialised on the counter, so a smaller total never overwrites a larger.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::storage::{Store, Table, WriteSet};
use crate::{Error, Result};

/// The most encryptions under one key with random 96-bit nonces.
pub const NIST_RANDOM_NONCE_LIMIT: u64 = 1 << 32;

/// The default bound after which a root rotation is asked for: half of
/// NIST's, so custodians have room to act.
pub const DEFAULT_ROTATE_AFTER_WRAPS: u64 = 1 << 31;

const PREFIX: &[u8] = b"wraps/";

fn row_key(version: u32) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Wraps per root key version, as stored.
#[derive(Debug)]
pub(crate) struct WrapCounts {
    counts: Mutex<BTreeMap<u32, u64>>,
    /// A rotation is asked for from this many wraps of the current version.
    rotate_after: u64,
}

impl WrapCounts {
    /// Reads the stored counts. A row that is not a version and a u64 is
    /// refused with a clear error.
    pub(crate) fn load(store: &dyn Store, rotate_after: u64) -> Result<Self> {
        let mut counts = BTreeMap::new();
        for (k, v) in store.scan_prefix(Table::Meta, PREFIX)? {
            let (Ok(version), Ok(n)) = (
                <[u8; 4]>::try_from(&k[PREFIX.len()..]),
                <[u8; 8]>::try_from(v.as_slice()),
            ) else {
                return Err(Error::Storage(
                    "a root key wrap counter in the data folder is malformed".into(),
                ));
            };
            counts.insert(u32::from_be_bytes(version), u64::from_be_bytes(n));
        }
        Ok(WrapCounts {
            counts: Mutex::new(counts),
            rotate_after,
        })
    }

    /// Wraps sealed so far under `version`.
    pub(crate) fn of(&self, version: u32) -> u64 {
        self.lock().get(&version).copied().unwrap_or(0)
    }

    /// The bound after which a rotation is asked for.
    pub(crate) fn rotate_after(&self) -> u64 {
        self.rotate_after
    }

    /// Writes `ws`, which holds `n` keys newly wrapped under `version`,
    /// with the new count in the same write (`write` does the writing).
    /// Refused, writing nothing, when the count would pass NIST's bound.
    pub(crate) fn commit<T>(
        &self,
        version: u32,
        n: u64,
        mut ws: WriteSet,
        write: impl FnOnce(WriteSet) -> Result<T>,
    ) -> Result<T> {
        let mut counts = self.lock();
        let before = counts.get(&version).copied().unwrap_or(0);
        let after = before.saturating_add(n);
        if after > NIST_RANDOM_NONCE_LIMIT {
            return Err(Error::FailedPrecondition(format!(
                "root key version {version} has sealed {before} keys, the most one key may \
                 seal with random nonces is 2^32 (NIST SP 800-38D): rotate the root key \
                 (vaultctl operator rotate root)"
            )));
        }
        if n > 0 {
            ws.put(Table::Meta, row_key(version), after.to_be_bytes().to_vec());
        }
        // Counted before the write: a failed write leaves the count high.
        counts.insert(version, after);
        let out = write(ws)?;
        if before < self.rotate_after && after >= self.rotate_after {
            tracing::warn!(
                root_version = version,
                wraps = after,
                bound = self.rotate_after,
                "the current root key has sealed as many keys as configured \
                 ([keys] rotate_root_after_wraps): rotate the root key \
                 (vaultctl operator rotate root)"
            );
        }
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}
