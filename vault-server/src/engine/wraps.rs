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
//!
//! On a store several servers share, each open engine counts in a row of
//! its own (`wraps/` ‖ version ‖ a random 16-byte instance id), so no
//! server's count overwrites another's; the total of a version is the sum
//! of its rows, this engine's own as it counts and the others' as last
//! read ([`WrapCounts::refresh`], every second). Between two reads the
//! others' wraps are not seen yet: the bound is checked against the total
//! as of the last read.

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

/// The length of an engine's instance id in its counter rows.
const INSTANCE: usize = 16;

fn row_key(version: u32, instance: Option<&[u8; INSTANCE]>) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&version.to_be_bytes());
    if let Some(id) = instance {
        k.extend_from_slice(id);
    }
    k
}

#[derive(Debug, Default)]
struct Counts {
    /// Wraps per version: this engine's own and the others' as last read.
    total: BTreeMap<u32, u64>,
    /// On a shared store, this engine's own wraps per version.
    own: BTreeMap<u32, u64>,
}

/// Wraps per root key version, as stored.
#[derive(Debug)]
pub(crate) struct WrapCounts {
    counts: Mutex<Counts>,
    /// A rotation is asked for from this many wraps of the current version.
    rotate_after: u64,
    /// On a shared store, the id of this engine's own rows.
    instance: Option<[u8; INSTANCE]>,
}

/// The stored counter rows, summed per version, leaving out the rows of
/// `instance`. A row that is not a version (and an instance id) and a u64
/// is refused with a clear error.
fn stored(store: &dyn Store, instance: Option<&[u8; INSTANCE]>) -> Result<BTreeMap<u32, u64>> {
    let mut counts = BTreeMap::new();
    for (k, v) in store.scan_prefix(Table::Meta, PREFIX)? {
        let rest = &k[PREFIX.len()..];
        let (version, id) = match rest.len() {
            4 => (&rest[..4], None),
            n if n == 4 + INSTANCE => (&rest[..4], Some(&rest[4..])),
            _ => (&[][..], None),
        };
        let (Ok(version), Ok(n)) = (
            <[u8; 4]>::try_from(version),
            <[u8; 8]>::try_from(v.as_slice()),
        ) else {
            return Err(Error::Storage(
                "a root key wrap counter in the data folder is malformed".into(),
            ));
        };
        if id.is_some() && id == instance.map(|i| &i[..]) {
            continue;
        }
        let total: &mut u64 = counts.entry(u32::from_be_bytes(version)).or_default();
        *total = total.saturating_add(u64::from_be_bytes(n));
    }
    Ok(counts)
}

impl WrapCounts {
    /// Reads the stored counts (on a `shared` store, as a new engine
    /// instance with rows of its own).
    pub(crate) fn load(store: &dyn Store, rotate_after: u64, shared: bool) -> Result<Self> {
        let instance = shared.then(|| {
            let mut id = [0u8; INSTANCE];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
            id
        });
        Ok(WrapCounts {
            counts: Mutex::new(Counts {
                total: stored(store, instance.as_ref())?,
                own: BTreeMap::new(),
            }),
            rotate_after,
            instance,
        })
    }

    /// On a shared store: reads the other engines' counts again.
    pub(crate) fn refresh(&self, store: &dyn Store) -> Result<()> {
        let Some(instance) = &self.instance else {
            return Ok(());
        };
        let others = stored(store, Some(instance))?;
        let mut counts = self.lock();
        let mut total = others;
        for (v, n) in &counts.own {
            let t: &mut u64 = total.entry(*v).or_default();
            *t = t.saturating_add(*n);
        }
        // A total never falls (another engine's row is never deleted).
        for (v, n) in &counts.total {
            let t: &mut u64 = total.entry(*v).or_default();
            *t = (*t).max(*n);
        }
        counts.total = total;
        Ok(())
    }

    /// Wraps sealed so far under `version`.
    pub(crate) fn of(&self, version: u32) -> u64 {
        self.lock().total.get(&version).copied().unwrap_or(0)
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
        let before = counts.total.get(&version).copied().unwrap_or(0);
        let after = before.saturating_add(n);
        if after > NIST_RANDOM_NONCE_LIMIT {
            return Err(Error::FailedPrecondition(format!(
                "root key version {version} has sealed {before} keys, the most one key may \
                 seal with random nonces is 2^32 (NIST SP 800-38D): rotate the root key \
                 (vaultctl operator rotate root)"
            )));
        }
        // What this engine stores: the total on a store of its own, its
        // own count on a shared one.
        let row = match &self.instance {
            None => after,
            Some(_) => {
                let own = counts
                    .own
                    .get(&version)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(n);
                counts.own.insert(version, own);
                own
            }
        };
        if n > 0 {
            ws.put(
                Table::Meta,
                row_key(version, self.instance.as_ref()),
                row.to_be_bytes().to_vec(),
            );
        }
        // Counted before the write: a failed write leaves the count high.
        counts.total.insert(version, after);
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_sharing_a_store_count_in_rows_of_their_own_and_see_each_others() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::storage::RocksStore::open(&dir.path().join("db"), &Default::default()).unwrap();
        let write = |ws: WriteSet| store.write(ws);
        let a = WrapCounts::load(&store, 100, true).unwrap();
        let b = WrapCounts::load(&store, 100, true).unwrap();
        a.commit(1, 5, WriteSet::new(), write).unwrap();
        b.commit(1, 7, WriteSet::new(), write).unwrap();
        a.commit(1, 1, WriteSet::new(), write).unwrap();
        // Neither overwrote the other's count.
        assert_eq!((a.of(1), b.of(1)), (6, 7));
        a.refresh(&store).unwrap();
        b.refresh(&store).unwrap();
        assert_eq!((a.of(1), b.of(1)), (13, 13));
        // A new engine reads the sum; a single server's row counts too.
        let mut ws = WriteSet::new();
        ws.put(Table::Meta, row_key(1, None), 4u64.to_be_bytes().to_vec());
        store.write(ws).unwrap();
        assert_eq!(WrapCounts::load(&store, 100, true).unwrap().of(1), 17);
        // The bound holds for the total.
        b.refresh(&store).unwrap();
        let mut ws = WriteSet::new();
        ws.put(
            Table::Meta,
            row_key(2, Some(&[9; INSTANCE])),
            NIST_RANDOM_NONCE_LIMIT.to_be_bytes().to_vec(),
        );
        store.write(ws).unwrap();
        b.refresh(&store).unwrap();
        assert!(matches!(
            b.commit(2, 1, WriteSet::new(), write),
            Err(Error::FailedPrecondition(_))
        ));
        // A malformed row is refused.
        let mut ws = WriteSet::new();
        ws.put(Table::Meta, b"wraps/xyz".to_vec(), b"1".to_vec());
        store.write(ws).unwrap();
        assert!(matches!(
            WrapCounts::load(&store, 100, true),
            Err(Error::Storage(_))
        ));
    }
}
