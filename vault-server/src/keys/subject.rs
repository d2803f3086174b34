//! Subject keys: one random 256-bit key per data subject and version,
//! stored wrapped under a root key.
//!
//! Stored value:
//!
//! ```text
//!  0        1                   5                                   65
//!  +--------+-------------------+-----------------------------------+
//!  | ver=1  | root key version  | nonce (12) ‖ wrapped key (32) ‖ tag (16) |
//!  | u8     | u32 big-endian    |                                   |
//!  +--------+-------------------+-----------------------------------+
//! ```
//!
//! `AAD = labels::SUBJECT_KEY ‖ lp(region) ‖ lp(subject id) ‖ u32be(subject key version)`,
//! so a wrapped key copied to another subject, version or region does not unwrap.

use std::collections::BTreeMap;

use super::{Keyring, Region};
use crate::crypto::{
    labels, open_wrapped, put_lp, seal_wrapped, Key256, WrapCipher, WRAP_OVERHEAD,
};
use crate::{Error, Result};

/// The stored wrapped-subject-key format this build writes and reads.
pub const WRAPPED_SUBJECT_KEY_V1: u8 = 1;
const STORED_LEN: usize = 1 + 4 + 32 + WRAP_OVERHEAD;

fn aad(region: &Region, subject: &str, version: u32) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(labels::SUBJECT_KEY.len() + 12 + region.as_str().len() + subject.len());
    aad.extend_from_slice(labels::SUBJECT_KEY);
    put_lp(&mut aad, region.as_str().as_bytes());
    put_lp(&mut aad, subject.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Wraps `key` (version `version` of `subject`'s key) under the current root key.
pub fn wrap_subject_key(
    keyring: &Keyring,
    subject: &str,
    version: u32,
    key: &Key256,
) -> Result<Vec<u8>> {
    let (root_version, root) = keyring.current_root()?;
    let mut out = Vec::with_capacity(STORED_LEN);
    out.push(WRAPPED_SUBJECT_KEY_V1);
    out.extend_from_slice(&root_version.to_be_bytes());
    out.extend_from_slice(&seal_wrapped(
        root,
        &aad(keyring.region(), subject, version),
        key.expose_secret(),
    ));
    Ok(out)
}

/// The root key version a stored subject key is wrapped under.
pub fn wrapping_version(stored: &[u8]) -> Result<u32> {
    if stored.len() != STORED_LEN || stored[0] != WRAPPED_SUBJECT_KEY_V1 {
        return Err(Error::Integrity);
    }
    Ok(u32::from_be_bytes([
        stored[1], stored[2], stored[3], stored[4],
    ]))
}

/// Unwraps a stored subject key. Any malformed, altered or moved value is
/// an integrity failure; a version the keyring records as erased is
/// [`Error::SubjectErased`], whatever the store holds.
pub fn unwrap_subject_key(
    keyring: &Keyring,
    subject: &str,
    version: u32,
    stored: &[u8],
) -> Result<Key256> {
    if keyring
        .erased_through(subject)
        .is_some_and(|v| version <= v)
    {
        return Err(Error::SubjectErased);
    }
    let root_version = wrapping_version(stored)?;
    let root = keyring.root_key(root_version).map_err(|e| {
        tracing::warn!(error = %e, "subject key wrapped under an unavailable root key");
        Error::Integrity
    })?;
    let plain = open_wrapped(root, &aad(keyring.region(), subject, version), &stored[5..])?;
    Key256::from_slice(&plain).ok_or(Error::Integrity)
}

/// Re-wraps a stored subject key under the keyring's current root key.
/// `None` when it is already wrapped under the current version.
pub fn rewrap_subject_key(
    keyring: &Keyring,
    subject: &str,
    version: u32,
    stored: &[u8],
) -> Result<Option<Vec<u8>>> {
    Rewrapper::new(keyring)?.rewrap(subject, version, stored)
}

/// Re-wraps many subject keys under the current root key, building each
/// root key's AES key schedule once (the re-wrap job's batches).
#[derive(Debug)]
pub struct Rewrapper<'a> {
    keyring: &'a Keyring,
    target: (u32, WrapCipher),
    /// Ciphers of older root versions; `None` for a version that is not
    /// usable (retired, destroyed, unknown).
    older: BTreeMap<u32, Option<WrapCipher>>,
}

impl<'a> Rewrapper<'a> {
    /// A re-wrapper to the keyring's current root key.
    pub fn new(keyring: &'a Keyring) -> Result<Self> {
        let (version, key) = keyring.current_root()?;
        Ok(Rewrapper {
            keyring,
            target: (version, WrapCipher::new(key)),
            older: BTreeMap::new(),
        })
    }

    /// [`rewrap_subject_key`], reusing the ciphers.
    pub fn rewrap(
        &mut self,
        subject: &str,
        version: u32,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let root_version = wrapping_version(stored)?;
        if root_version == self.target.0 {
            return Ok(None);
        }
        if self
            .keyring
            .erased_through(subject)
            .is_some_and(|v| version <= v)
        {
            return Err(Error::SubjectErased);
        }
        let keyring = self.keyring;
        let old = self
            .older
            .entry(root_version)
            .or_insert_with(|| keyring.root_key(root_version).ok().map(WrapCipher::new))
            .as_ref()
            .ok_or_else(|| {
                tracing::warn!(
                    root_version,
                    "subject key wrapped under an unavailable root key"
                );
                Error::Integrity
            })?;
        let aad = aad(keyring.region(), subject, version);
        let plain = old.open(&aad, &stored[5..])?;
        if plain.len() != 32 {
            return Err(Error::Integrity);
        }
        let mut out = Vec::with_capacity(STORED_LEN);
        out.push(WRAPPED_SUBJECT_KEY_V1);
        out.extend_from_slice(&self.target.0.to_be_bytes());
        out.extend_from_slice(&self.target.1.seal(&aad, &plain));
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::keys::Custody;

    fn keyring() -> Keyring {
        Keyring::generate(
            "eu".parse().unwrap(),
            Custody {
                set_id: [1; 16],
                threshold: 1,
                shares: 1,
            },
        )
    }

    #[test]
    fn rewrap_moves_to_the_current_root_and_keeps_the_key() {
        let mut kr = keyring();
        let sk = Key256::random();
        let w1 = wrap_subject_key(&kr, "alice", 3, &sk).unwrap();
        assert_eq!(rewrap_subject_key(&kr, "alice", 3, &w1).unwrap(), None);
        kr.rotate_root();
        let w2 = rewrap_subject_key(&kr, "alice", 3, &w1).unwrap().unwrap();
        assert_eq!(wrapping_version(&w1).unwrap(), 1);
        assert_eq!(wrapping_version(&w2).unwrap(), 2);
        assert_eq!(rewrap_subject_key(&kr, "alice", 3, &w2).unwrap(), None);
        kr.retire_root(1).unwrap();
        assert_eq!(
            unwrap_subject_key(&kr, "alice", 3, &w2)
                .unwrap()
                .expose_secret(),
            sk.expose_secret()
        );
        // The retired version unwraps no more.
        assert!(matches!(
            unwrap_subject_key(&kr, "alice", 3, &w1),
            Err(Error::Integrity)
        ));
    }

    #[test]
    fn erased_versions_are_refused_newer_ones_are_not() {
        let mut kr = keyring();
        let w1 = wrap_subject_key(&kr, "alice", 1, &Key256::random()).unwrap();
        let w2 = wrap_subject_key(&kr, "alice", 2, &Key256::random()).unwrap();
        kr.record_erasure("alice", 1);
        assert!(matches!(
            unwrap_subject_key(&kr, "alice", 1, &w1),
            Err(Error::SubjectErased)
        ));
        assert!(unwrap_subject_key(&kr, "alice", 2, &w2).is_ok());
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let kr = keyring();
        let sk = Key256::random();
        let w = wrap_subject_key(&kr, "alice", 1, &sk).unwrap();
        assert_eq!(w.len(), STORED_LEN);
        assert_eq!(
            unwrap_subject_key(&kr, "alice", 1, &w)
                .unwrap()
                .expose_secret(),
            sk.expose_secret()
        );
        assert!(matches!(
            unwrap_subject_key(&kr, "bob", 1, &w),
            Err(Error::Integrity)
        ));
        assert!(matches!(
            unwrap_subject_key(&kr, "alice", 2, &w),
            Err(Error::Integrity)
        ));
        let other = keyring();
        assert!(matches!(
            unwrap_subject_key(&other, "alice", 1, &w),
            Err(Error::Integrity)
        ));
        for n in 0..w.len() {
            assert!(matches!(
                unwrap_subject_key(&kr, "alice", 1, &w[..n]),
                Err(Error::Integrity)
            ));
        }
        let mut t = w.clone();
        t[1] = 9; // unknown root version
        assert!(matches!(
            unwrap_subject_key(&kr, "alice", 1, &t),
            Err(Error::Integrity)
        ));
    }
}
