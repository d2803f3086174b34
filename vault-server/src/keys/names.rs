//! Storage names: the keyed pseudonyms rows are stored under, so that no
//! record id or subject id (personal data: an e-mail address, a customer
//! number) is in clear in any key or value of the data folder.
//!
//! ```text
//! names key    = derive_storage_names_key(pseudonym key, region)
//! subject name = HMAC-SHA256(names key, labels::SUBJECT_NAME ‖ lp(subject id))
//! record name  = HMAC-SHA256(names key, labels::RECORD_NAME ‖ lp(collection) ‖ lp(record id))
//! bucket       = u16be(subject name[0..2]) mod the keyring's shred-bucket count
//! ```
//!
//! The names key is not the key of the audit log's pseudonyms: a reader of
//! the data folder cannot match a row to an auditor's view of the log by
//! recomputing either, and neither is computable without the keyring.
//! The clear ids live only inside each stored record, encrypted (see
//! `storage::codec`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto::{derive_storage_names_key, labels, put_lp};

use super::Keyring;

/// A subject's storage name.
pub type SubjectName = [u8; 32];
/// A record's storage name.
pub type RecordName = [u8; 32];

/// Computes storage names; derived once from the keyring (the pseudonym
/// key never changes in a keyring's life).
#[derive(Clone)]
pub struct StorageNames {
    /// HMAC-SHA256 with the key already absorbed (its inner and outer
    /// states), cloned per name. The `hmac` crate wipes nothing on drop, but
    /// the states do not reveal the key (they are SHA-256 chaining values).
    mac: Hmac<Sha256>,
    buckets: u16,
}

impl std::fmt::Debug for StorageNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageNames")
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

impl StorageNames {
    /// The names of `keyring`'s region.
    pub fn of(keyring: &Keyring) -> Self {
        let key = derive_storage_names_key(keyring.pseudonym_key(), keyring.region().as_str());
        StorageNames {
            // HMAC takes keys of any length; 32 bytes is always accepted.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret())
                .expect("HMAC accepts any key length"),
            buckets: keyring.shred_buckets(),
        }
    }

    /// The storage name of a subject id.
    pub fn subject(&self, subject: &str) -> SubjectName {
        let mut m = self.mac.clone();
        m.update(labels::SUBJECT_NAME);
        let mut lp = Vec::with_capacity(4 + subject.len());
        put_lp(&mut lp, subject.as_bytes());
        m.update(&lp);
        m.finalize().into_bytes().into()
    }

    /// The storage name of a record.
    pub fn record(&self, collection: &str, id: &str) -> RecordName {
        let mut m = self.mac.clone();
        m.update(labels::RECORD_NAME);
        let mut lp = Vec::with_capacity(8 + collection.len() + id.len());
        put_lp(&mut lp, collection.as_bytes());
        put_lp(&mut lp, id.as_bytes());
        m.update(&lp);
        m.finalize().into_bytes().into()
    }

    /// The shred bucket of a subject.
    pub fn bucket(&self, subject: &SubjectName) -> u16 {
        bucket_of(subject, self.buckets)
    }
}

/// The shred bucket of a subject name among `buckets` (at least 1).
pub fn bucket_of(subject: &SubjectName, buckets: u16) -> u16 {
    u16::from_be_bytes([subject[0], subject[1]]) % buckets.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Custody;

    fn keyring(region: &str) -> Keyring {
        Keyring::generate(
            region.parse().unwrap(),
            Custody {
                set_id: [1; 16],
                threshold: 1,
                shares: 1,
            },
        )
    }

    #[test]
    fn names_are_keyed_distinct_and_stable() {
        let kr = keyring("eu");
        let n = StorageNames::of(&kr);
        assert_eq!(n.subject("alice"), n.subject("alice"));
        assert_ne!(n.subject("alice"), n.subject("bob"));
        // Length-prefixed: no two (collection, id) pairs share a name.
        assert_ne!(n.record("ab", "c"), n.record("a", "bc"));
        assert_ne!(n.record("users", "alice"), n.subject("alice"));
        // Another keyring (another key) names the same ids otherwise.
        let other = StorageNames::of(&keyring("eu"));
        assert_ne!(other.subject("alice"), n.subject("alice"));
        // The region is bound: the same pseudonym key under another region
        // label gives other names.
        let relabelled = StorageNames::of(&kr.relabelled_for_test("us".parse().unwrap()));
        assert_ne!(relabelled.subject("alice"), n.subject("alice"));
        // Not the audit log's pseudonym.
        assert_ne!(n.subject("alice"), kr.subject_pseudonym("alice"));
        assert!(n.bucket(&n.subject("alice")) < kr.shred_buckets());
    }
}
