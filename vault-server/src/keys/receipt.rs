//! Erasure receipts: what the vault signs when it crypto-shreds a subject.
//!
//! Body (all integers big-endian), the bytes the signature covers after
//! the label:
//!
//! ```text
//!  0     1             17          25      27        27+r         43+r                75+r      79+r          87+r
//!  +-----+-------------+-----------+-------+---------+------------+-------------------+---------+-------------+
//!  | ver | receipt id  | erased at | u16 r | region  | keyring id | subject pseudonym | key     | records     |
//!  | =2  | (16 random) | u64 secs  |       | (r B)   | (16 B)     | (32 B)            | vers u32| deleted u64 |
//!  +-----+-------------+-----------+-------+---------+------------+-------------------+---------+-------------+
//!  87+r            89+r                  93+r                     101+r
//!  +---------------+---------------------+------------------------+
//!  | shred bucket  | bucket key epoch    | other subjects' keys   |
//!  | u16           | destroyed, u32      | re-wrapped, u64        |
//!  +---------------+---------------------+------------------------+
//! ```
//!
//! The last three fields say what the erasure destroyed: the epoch of the
//! shred-bucket key that wrapped the subject's keys (and every other key of
//! its bucket, re-wrapped under the next epoch), so no copy of the data
//! folder made before the erasure opens any key of that bucket with the
//! current keyring. Version 1 (without them) is refused.
//!
//! `signature = Ed25519(signing key, labels::ERASURE_RECEIPT ‖ body)`, where
//! the signing key's seed is the keyring's audit seed. The receipt names the
//! subject only by its pseudonym, so it holds no personal data. Stored, a
//! receipt is `body ‖ signature (64 B)`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;

use super::{Keyring, SubjectPseudonym};
use crate::crypto::labels;

/// The receipt body format this build writes and reads.
pub const ERASURE_RECEIPT_V2: u8 = 2;
const SIGNATURE_LEN: usize = 64;

/// Why stored receipt bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Too short, too long, or a field that does not parse.
    #[error("malformed erasure receipt")]
    Malformed,
    /// A body version this build does not know.
    #[error("erasure receipt version {0} is not supported")]
    UnknownVersion(u8),
    /// The signature does not verify under the given key.
    #[error("erasure receipt signature does not verify")]
    BadSignature,
}

/// One signed erasure receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureReceipt {
    /// Random id of the receipt.
    pub id: [u8; 16],
    /// When the subject was erased (unix seconds).
    pub erased_at: u64,
    /// The vault's region.
    pub region: String,
    /// The keyring that did the erasure.
    pub keyring_id: [u8; 16],
    /// The subject, by pseudonym.
    pub subject: SubjectPseudonym,
    /// Key versions destroyed: 1 through this (0: the subject had none).
    pub key_versions_destroyed: u32,
    /// Records deleted.
    pub records_deleted: u64,
    /// The key material destroyed.
    pub shredded: Shredded,
    /// The signature over the label and [`ErasureReceipt::body`].
    pub signature: [u8; SIGNATURE_LEN],
}

/// What an erasure destroyed: one epoch of one shred-bucket key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shredded {
    /// The subject's shred bucket.
    pub bucket: u16,
    /// The epoch of the bucket key destroyed.
    pub epoch: u32,
    /// Keys of other subjects of the bucket re-wrapped under the next epoch.
    pub keys_rewrapped: u64,
}

/// The vault's Ed25519 signing key, from the keyring's audit seed.
pub fn signing_key(keyring: &Keyring) -> SigningKey {
    SigningKey::from_bytes(keyring.audit_seed().expose_secret())
}

impl ErasureReceipt {
    /// Makes and signs a receipt for the erasure of `subject`.
    pub fn sign(
        keyring: &Keyring,
        subject: &str,
        key_versions_destroyed: u32,
        records_deleted: u64,
        erased_at: u64,
        shredded: Shredded,
    ) -> Self {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let mut r = ErasureReceipt {
            id,
            erased_at,
            region: keyring.region().to_string(),
            keyring_id: keyring.id(),
            subject: keyring.subject_pseudonym(subject),
            key_versions_destroyed,
            records_deleted,
            shredded,
            signature: [0; SIGNATURE_LEN],
        };
        r.signature = signing_key(keyring)
            .sign(&signed_bytes(&r.body()))
            .to_bytes();
        r
    }

    /// The signed body.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(101 + self.region.len());
        b.push(ERASURE_RECEIPT_V2);
        b.extend_from_slice(&self.id);
        b.extend_from_slice(&self.erased_at.to_be_bytes());
        // A region is at most 16 bytes (see Region).
        b.extend_from_slice(&(self.region.len() as u16).to_be_bytes());
        b.extend_from_slice(self.region.as_bytes());
        b.extend_from_slice(&self.keyring_id);
        b.extend_from_slice(&self.subject);
        b.extend_from_slice(&self.key_versions_destroyed.to_be_bytes());
        b.extend_from_slice(&self.records_deleted.to_be_bytes());
        b.extend_from_slice(&self.shredded.bucket.to_be_bytes());
        b.extend_from_slice(&self.shredded.epoch.to_be_bytes());
        b.extend_from_slice(&self.shredded.keys_rewrapped.to_be_bytes());
        b
    }

    /// The stored form: body ‖ signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.body();
        b.extend_from_slice(&self.signature);
        b
    }

    /// Parses the stored form (the signature is not checked here).
    pub fn decode(stored: &[u8]) -> Result<Self, ReceiptError> {
        use ReceiptError::Malformed;
        let (body, sig) = stored
            .split_last_chunk::<SIGNATURE_LEN>()
            .ok_or(Malformed)?;
        let (&ver, rest) = body.split_first().ok_or(Malformed)?;
        if ver != ERASURE_RECEIPT_V2 {
            return Err(ReceiptError::UnknownVersion(ver));
        }
        let (id, rest) = rest.split_first_chunk::<16>().ok_or(Malformed)?;
        let (at, rest) = rest.split_first_chunk::<8>().ok_or(Malformed)?;
        let (rlen, rest) = rest.split_first_chunk::<2>().ok_or(Malformed)?;
        let rlen = u16::from_be_bytes(*rlen) as usize;
        if rest.len() < rlen {
            return Err(Malformed);
        }
        let (region, rest) = rest.split_at(rlen);
        let region = std::str::from_utf8(region).map_err(|_| Malformed)?;
        let (keyring_id, rest) = rest.split_first_chunk::<16>().ok_or(Malformed)?;
        let (subject, rest) = rest.split_first_chunk::<32>().ok_or(Malformed)?;
        let (versions, rest) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
        let (records, rest) = rest.split_first_chunk::<8>().ok_or(Malformed)?;
        let (bucket, rest) = rest.split_first_chunk::<2>().ok_or(Malformed)?;
        let (epoch, rest) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
        let rewrapped: [u8; 8] = rest.try_into().map_err(|_| Malformed)?;
        Ok(ErasureReceipt {
            id: *id,
            erased_at: u64::from_be_bytes(*at),
            region: region.to_owned(),
            keyring_id: *keyring_id,
            subject: *subject,
            key_versions_destroyed: u32::from_be_bytes(*versions),
            records_deleted: u64::from_be_bytes(*records),
            shredded: Shredded {
                bucket: u16::from_be_bytes(*bucket),
                epoch: u32::from_be_bytes(*epoch),
                keys_rewrapped: u64::from_be_bytes(rewrapped),
            },
            signature: *sig,
        })
    }

    /// Checks the signature under `public_key`.
    pub fn verify(&self, public_key: &VerifyingKey) -> Result<(), ReceiptError> {
        let sig = Signature::from_bytes(&self.signature);
        public_key
            .verify(&signed_bytes(&self.body()), &sig)
            .map_err(|_| ReceiptError::BadSignature)
    }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(labels::ERASURE_RECEIPT.len() + body.len());
    m.extend_from_slice(labels::ERASURE_RECEIPT);
    m.extend_from_slice(body);
    m
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
    fn signs_verifies_and_round_trips() {
        let kr = keyring();
        let shredded = Shredded {
            bucket: 513,
            epoch: 4,
            keys_rewrapped: 977,
        };
        let r = ErasureReceipt::sign(&kr, "alice", 2, 7, 1_700_000_000, shredded);
        let pk = signing_key(&kr).verifying_key();
        r.verify(&pk).unwrap();
        let back = ErasureReceipt::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.subject, kr.subject_pseudonym("alice"));
        // Another vault's key does not verify it.
        let other = signing_key(&keyring()).verifying_key();
        assert_eq!(r.verify(&other), Err(ReceiptError::BadSignature));
        // Neither does an edited receipt.
        let mut edited = r.clone();
        edited.records_deleted = 6;
        assert_eq!(edited.verify(&pk), Err(ReceiptError::BadSignature));
        let mut edited = r.clone();
        edited.shredded.epoch = 3;
        assert_eq!(edited.verify(&pk), Err(ReceiptError::BadSignature));
    }

    #[test]
    fn decoder_refuses_damage_without_panicking() {
        let kr = keyring();
        let stored = ErasureReceipt::sign(&kr, "alice", 1, 1, 1, Shredded::default()).encode();
        for n in 0..stored.len() {
            assert!(ErasureReceipt::decode(&stored[..n]).is_err(), "prefix {n}");
        }
        let mut longer = stored.clone();
        longer.insert(30, 0);
        assert!(ErasureReceipt::decode(&longer).is_err());
        let mut v1 = stored.clone();
        v1[0] = 1;
        assert_eq!(
            ErasureReceipt::decode(&v1),
            Err(ReceiptError::UnknownVersion(1))
        );
        let pk = signing_key(&kr).verifying_key();
        for i in 0..stored.len() {
            let mut t = stored.clone();
            t[i] ^= 0x10;
            if let Ok(r) = ErasureReceipt::decode(&t) {
                assert!(r.verify(&pk).is_err(), "flip at {i} verified");
            }
        }
    }
}
