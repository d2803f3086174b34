//! Subject keys: one random 256-bit key per data subject and version,
//! stored wrapped under a key derived from a root key and the subject's
//! shred-bucket key (see `crypto::derive_wrap_key`).
//!
//! Stored value, format 2:
//!
//! ```text
//!  0        1                   5                   9                                          69
//!  +--------+-------------------+-------------------+------------------------------------------+
//!  | ver=2  | root key version  | bucket key epoch  | nonce (12) ‖ wrapped key (32) ‖ tag (16) |
//!  | u8     | u32 big-endian    | u32 big-endian    |                                          |
//!  +--------+-------------------+-------------------+------------------------------------------+
//! ```
//!
//! The bucket is the subject's (from its storage name), so it is not stored.
//! `AAD = labels::SUBJECT_KEY_V2 ‖ lp(region) ‖ subject storage name (32) ‖
//! u32be(subject key version)`, so a wrapped key copied to another subject,
//! version or region does not unwrap. Destroying the bucket key's epoch (an
//! erasure) or the root key version makes every copy of the value, in any
//! backup, unopenable. Format 1 (wrapped under the root key alone) is
//! refused.

use std::collections::BTreeMap;

use super::names::{bucket_of, SubjectName};
use super::{Keyring, Region};
use crate::crypto::{
    derive_wrap_key, labels, put_lp, Key256, WrapCipher, WrapKeyContext, WRAP_OVERHEAD,
};
use crate::{Error, Result};

/// The stored wrapped-subject-key format this build writes and reads.
pub const WRAPPED_SUBJECT_KEY_V2: u8 = 2;
const HEADER_LEN: usize = 9;
const STORED_LEN: usize = HEADER_LEN + 32 + WRAP_OVERHEAD;

fn aad(region: &Region, subject: &SubjectName, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(labels::SUBJECT_KEY_V2.len() + 40 + region.as_str().len());
    aad.extend_from_slice(labels::SUBJECT_KEY_V2);
    put_lp(&mut aad, region.as_str().as_bytes());
    aad.extend_from_slice(subject);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// The root key version and bucket epoch a stored subject key is wrapped
/// under (its bucket is its subject's).
pub fn wrapping(stored: &[u8]) -> Result<(u32, u32)> {
    if stored.len() != STORED_LEN || stored[0] != WRAPPED_SUBJECT_KEY_V2 {
        return Err(Error::Integrity);
    }
    let word =
        |i: usize| u32::from_be_bytes([stored[i], stored[i + 1], stored[i + 2], stored[i + 3]]);
    Ok((word(1), word(5)))
}

/// The root key version a stored subject key is wrapped under.
pub fn wrapping_version(stored: &[u8]) -> Result<u32> {
    wrapping(stored).map(|(root, _)| root)
}

/// The wrapping cipher of one (root version, bucket, epoch), if the keyring
/// still holds both keys.
fn cipher(keyring: &Keyring, ctx: WrapKeyContext) -> Option<WrapCipher> {
    let root = keyring.root_key(ctx.root_version).ok()?;
    let bucket = keyring.shred_key(ctx.bucket, ctx.epoch).ok()?;
    let key = derive_wrap_key(root, bucket, keyring.region().as_str(), ctx);
    Some(WrapCipher::new(&key))
}

/// Where a new wrap of `subject`'s key goes: the current root key and the
/// newest epoch of its bucket.
fn target(keyring: &Keyring, subject: &SubjectName) -> Result<WrapKeyContext> {
    let (root_version, _) = keyring.current_root()?;
    let bucket = bucket_of(subject, keyring.shred_buckets());
    Ok(WrapKeyContext {
        root_version,
        bucket,
        epoch: keyring.shred_epoch(bucket)?,
    })
}

fn encode(ctx: WrapKeyContext, wrapped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(STORED_LEN);
    out.push(WRAPPED_SUBJECT_KEY_V2);
    out.extend_from_slice(&ctx.root_version.to_be_bytes());
    out.extend_from_slice(&ctx.epoch.to_be_bytes());
    out.extend_from_slice(wrapped);
    out
}

/// Wraps `key` (version `version` of the subject named `subject`) under the
/// current root key and the newest epoch of the subject's bucket key.
pub fn wrap_subject_key(
    keyring: &Keyring,
    subject: &SubjectName,
    version: u32,
    key: &Key256,
) -> Result<Vec<u8>> {
    let ctx = target(keyring, subject)?;
    let cipher = cipher(keyring, ctx).ok_or(Error::Integrity)?;
    Ok(encode(
        ctx,
        &cipher.seal(
            &aad(keyring.region(), subject, version),
            key.expose_secret(),
        ),
    ))
}

/// Unwraps a stored subject key. Any malformed, altered or moved value, or
/// one wrapped under a root key or bucket-key epoch the keyring no longer
/// holds, is an integrity failure; a version the keyring records as erased
/// is [`Error::SubjectErased`], whatever the store holds.
pub fn unwrap_subject_key(
    keyring: &Keyring,
    subject: &SubjectName,
    version: u32,
    stored: &[u8],
) -> Result<Key256> {
    if keyring
        .erased_through(subject)
        .is_some_and(|v| version <= v)
    {
        return Err(Error::SubjectErased);
    }
    let (root_version, epoch) = wrapping(stored)?;
    let ctx = WrapKeyContext {
        root_version,
        bucket: bucket_of(subject, keyring.shred_buckets()),
        epoch,
    };
    let cipher = cipher(keyring, ctx).ok_or_else(|| {
        tracing::warn!(
            root_version,
            bucket = ctx.bucket,
            epoch,
            "subject key wrapped under an unavailable root key or shred-bucket key"
        );
        Error::Integrity
    })?;
    let plain = cipher.open(
        &aad(keyring.region(), subject, version),
        &stored[HEADER_LEN..],
    )?;
    Key256::from_slice(&plain).ok_or(Error::Integrity)
}

/// Re-wraps a stored subject key under the keyring's current root key and
/// its bucket's newest epoch. `None` when it is already wrapped there.
pub fn rewrap_subject_key(
    keyring: &Keyring,
    subject: &SubjectName,
    version: u32,
    stored: &[u8],
) -> Result<Option<Vec<u8>>> {
    Rewrapper::new(keyring).rewrap(subject, version, stored)
}

/// Re-wraps many subject keys, deriving each wrapping key and building its
/// AES key schedule once (the re-wrap job's batches, an erasure's bucket).
#[derive(Debug)]
pub struct Rewrapper<'a> {
    keyring: &'a Keyring,
    /// Ciphers by (root version, bucket, epoch); `None` for one the keyring
    /// cannot make (a key retired, destroyed or unknown).
    ciphers: BTreeMap<WrapKeyContext, Option<WrapCipher>>,
}

impl<'a> Rewrapper<'a> {
    /// A re-wrapper to the keyring's current root key and newest epochs.
    pub fn new(keyring: &'a Keyring) -> Self {
        Rewrapper {
            keyring,
            ciphers: BTreeMap::new(),
        }
    }

    fn cipher(&mut self, ctx: WrapKeyContext) -> Result<&WrapCipher> {
        let keyring = self.keyring;
        self.ciphers
            .entry(ctx)
            .or_insert_with(|| cipher(keyring, ctx))
            .as_ref()
            .ok_or_else(|| {
                tracing::warn!(
                    root_version = ctx.root_version,
                    bucket = ctx.bucket,
                    epoch = ctx.epoch,
                    "subject key wrapped under an unavailable root key or shred-bucket key"
                );
                Error::Integrity
            })
    }

    /// [`rewrap_subject_key`], reusing the ciphers.
    pub fn rewrap(
        &mut self,
        subject: &SubjectName,
        version: u32,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        // Erased first: a row already at the target must not be kept.
        if self
            .keyring
            .erased_through(subject)
            .is_some_and(|v| version <= v)
        {
            return Err(Error::SubjectErased);
        }
        let (root_version, epoch) = wrapping(stored)?;
        let to = target(self.keyring, subject)?;
        if (root_version, epoch) == (to.root_version, to.epoch) {
            return Ok(None);
        }
        let from = WrapKeyContext {
            root_version,
            bucket: to.bucket,
            epoch,
        };
        let aad = aad(self.keyring.region(), subject, version);
        let plain = self.cipher(from)?.open(&aad, &stored[HEADER_LEN..])?;
        if plain.len() != 32 {
            return Err(Error::Integrity);
        }
        let sealed = self.cipher(to)?.seal(&aad, &plain);
        Ok(Some(encode(to, &sealed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::keys::{Custody, StorageNames};

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

    fn names(kr: &Keyring) -> (SubjectName, SubjectName) {
        let n = StorageNames::of(kr);
        (n.subject("alice"), n.subject("bob"))
    }

    #[test]
    fn rewrap_moves_to_the_current_root_and_keeps_the_key() {
        let mut kr = keyring();
        let (alice, _) = names(&kr);
        let sk = Key256::random();
        let w1 = wrap_subject_key(&kr, &alice, 3, &sk).unwrap();
        assert_eq!(rewrap_subject_key(&kr, &alice, 3, &w1).unwrap(), None);
        kr.rotate_root();
        let w2 = rewrap_subject_key(&kr, &alice, 3, &w1).unwrap().unwrap();
        assert_eq!(wrapping_version(&w1).unwrap(), 1);
        assert_eq!(wrapping_version(&w2).unwrap(), 2);
        assert_eq!(rewrap_subject_key(&kr, &alice, 3, &w2).unwrap(), None);
        kr.retire_root(1).unwrap();
        assert_eq!(
            unwrap_subject_key(&kr, &alice, 3, &w2)
                .unwrap()
                .expose_secret(),
            sk.expose_secret()
        );
        // The retired version unwraps no more.
        assert!(matches!(
            unwrap_subject_key(&kr, &alice, 3, &w1),
            Err(Error::Integrity)
        ));
    }

    /// A shred moves a bucket to a new epoch; once the old epoch is
    /// dropped, every copy wrapped under it is dead, the re-wrapped ones
    /// live, and subjects of other buckets are untouched.
    #[test]
    fn a_finished_shred_kills_every_old_wrap_of_its_bucket() {
        let mut kr = keyring();
        let (alice, bob) = names(&kr);
        let bucket = bucket_of(&alice, kr.shred_buckets());
        let (a, b) = (Key256::random(), Key256::random());
        let wa = wrap_subject_key(&kr, &alice, 1, &a).unwrap();
        let wb = wrap_subject_key(&kr, &bob, 1, &b).unwrap();
        assert_eq!(kr.begin_shred(bucket).unwrap(), (1, 2));
        assert_eq!(kr.unfinished_shreds(), vec![bucket]);
        let moved = rewrap_subject_key(&kr, &alice, 1, &wa).unwrap().unwrap();
        assert_eq!(wrapping(&moved).unwrap(), (1, 2));
        // Both epochs open while the shred runs.
        assert!(unwrap_subject_key(&kr, &alice, 1, &wa).is_ok());
        assert_eq!(kr.finish_shred(bucket), vec![1]);
        assert!(kr.unfinished_shreds().is_empty());
        assert!(matches!(
            unwrap_subject_key(&kr, &alice, 1, &wa),
            Err(Error::Integrity)
        ));
        assert_eq!(
            unwrap_subject_key(&kr, &alice, 1, &moved)
                .unwrap()
                .expose_secret(),
            a.expose_secret()
        );
        if bucket_of(&bob, kr.shred_buckets()) != bucket {
            assert_eq!(
                unwrap_subject_key(&kr, &bob, 1, &wb)
                    .unwrap()
                    .expose_secret(),
                b.expose_secret()
            );
        }
    }

    #[test]
    fn erased_versions_are_refused_newer_ones_are_not() {
        let mut kr = keyring();
        let (alice, _) = names(&kr);
        let w1 = wrap_subject_key(&kr, &alice, 1, &Key256::random()).unwrap();
        let w2 = wrap_subject_key(&kr, &alice, 2, &Key256::random()).unwrap();
        kr.record_erasure(&alice, 1);
        assert!(matches!(
            unwrap_subject_key(&kr, &alice, 1, &w1),
            Err(Error::SubjectErased)
        ));
        assert!(unwrap_subject_key(&kr, &alice, 2, &w2).is_ok());
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let kr = keyring();
        let (alice, bob) = names(&kr);
        let sk = Key256::random();
        let w = wrap_subject_key(&kr, &alice, 1, &sk).unwrap();
        assert_eq!(w.len(), STORED_LEN);
        assert_eq!(
            unwrap_subject_key(&kr, &alice, 1, &w)
                .unwrap()
                .expose_secret(),
            sk.expose_secret()
        );
        assert!(matches!(
            unwrap_subject_key(&kr, &bob, 1, &w),
            Err(Error::Integrity)
        ));
        assert!(matches!(
            unwrap_subject_key(&kr, &alice, 2, &w),
            Err(Error::Integrity)
        ));
        let other = keyring();
        assert!(matches!(
            unwrap_subject_key(&other, &alice, 1, &w),
            Err(Error::Integrity)
        ));
        for n in 0..w.len() {
            assert!(matches!(
                unwrap_subject_key(&kr, &alice, 1, &w[..n]),
                Err(Error::Integrity)
            ));
        }
        for (at, byte) in [(1, 9u8), (5, 9), (0, 1)] {
            // an unknown root version, an unknown epoch, format 1
            let mut t = w.clone();
            t[at] = byte;
            assert!(matches!(
                unwrap_subject_key(&kr, &alice, 1, &t),
                Err(Error::Integrity)
            ));
        }
    }
}
