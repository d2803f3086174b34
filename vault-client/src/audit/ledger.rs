//! A data subject's access ledger, checked on this side: every event's
//! inclusion proof against a checkpoint signed by the pinned key, and that
//! each event names the subject. Independent of the vault's code, like the
//! rest of this module.

use std::fmt;

use super::merkle::{leaf_hash, verify_inclusion, Hash};
use super::note::{Checkpoint, VerifierKey};

/// One page of a ledger, as the vault sent it
/// ([`crate::VaultClient::access_ledger`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPage {
    /// The subject's pseudonym (hex), as events name it in `subjects`.
    pub subject_pseudonym: String,
    /// The signed checkpoint the proofs are against.
    pub checkpoint: String,
    /// The events, oldest first.
    pub entries: Vec<LedgerEntry>,
    /// Where the next page starts, if there is one.
    pub next_index: Option<u64>,
    /// The vault's own verifier key, as it sent it (trust it only as far as
    /// the vault; pin a key obtained out of band instead).
    pub verifier_key: String,
}

/// One event of a ledger and its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The event's index in the log.
    pub index: u64,
    /// The event as stored (the Merkle leaf, a JSON object).
    pub event: Vec<u8>,
    /// Its inclusion proof, from the leaf up.
    pub proof: Vec<Hash>,
}

/// Why a ledger page does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerFault {
    /// The checkpoint does not verify with the key.
    Checkpoint(String),
    /// Entry `index` is not proved to be in the checkpoint's tree.
    NotIncluded {
        /// The entry's index.
        index: u64,
        /// Why.
        why: String,
    },
    /// Entry `index` is not an event about the subject (or not the event
    /// at that index).
    NotAboutSubject {
        /// The entry's index.
        index: u64,
    },
    /// The entries are not in increasing index order.
    OutOfOrder {
        /// The first entry out of order.
        index: u64,
    },
}

impl fmt::Display for LedgerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerFault::Checkpoint(why) => write!(f, "the checkpoint does not verify: {why}"),
            LedgerFault::NotIncluded { index, why } => {
                write!(f, "event {index} is not proved to be in the log: {why}")
            }
            LedgerFault::NotAboutSubject { index } => write!(
                f,
                "event {index} does not name the subject (or is not the event at that index)"
            ),
            LedgerFault::OutOfOrder { index } => {
                write!(f, "event {index} is out of order in the ledger")
            }
        }
    }
}

impl std::error::Error for LedgerFault {}

impl LedgerPage {
    /// Checks the page: the checkpoint with `key`, then each entry's
    /// inclusion proof in the checkpoint's tree, that the event states its
    /// own index and names the subject's pseudonym, and that entries come
    /// in increasing order. Returns the checkpoint.
    pub fn verify(&self, key: &VerifierKey) -> Result<Checkpoint, LedgerFault> {
        let checkpoint = Checkpoint::open(self.checkpoint.as_bytes(), key)
            .map_err(|e| LedgerFault::Checkpoint(e.to_string()))?;
        if let Some(next) = self.next_index.filter(|&n| n >= checkpoint.size) {
            return Err(LedgerFault::OutOfOrder { index: next });
        }
        let mut last = None;
        for entry in &self.entries {
            let index = entry.index;
            if last.is_some_and(|l| index <= l) {
                return Err(LedgerFault::OutOfOrder { index });
            }
            last = Some(index);
            verify_inclusion(
                &leaf_hash(&entry.event),
                index,
                checkpoint.size,
                &entry.proof,
                &checkpoint.root,
            )
            .map_err(|e| LedgerFault::NotIncluded {
                index,
                why: e.to_string(),
            })?;
            let about = serde_json::from_slice::<serde_json::Value>(&entry.event)
                .ok()
                .is_some_and(|ev| {
                    ev["index"].as_u64() == Some(index)
                        && ev["subjects"].as_array().is_some_and(|subjects| {
                            subjects
                                .iter()
                                .any(|s| s.as_str() == Some(self.subject_pseudonym.as_str()))
                        })
                });
            if !about {
                return Err(LedgerFault::NotAboutSubject { index });
            }
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::root_from_leaf_hashes;
    use crate::audit::note::tests::{signed, verifier};
    use ed25519_dalek::SigningKey;

    const PSEUDONYM: &str = "ab";

    fn event(index: u64, subject: &str) -> Vec<u8> {
        serde_json::json!({"index": index, "subjects": [subject], "operation": "read"})
            .to_string()
            .into_bytes()
    }

    /// A checkpoint of `root`/`size` signed by a key from `seed`, and the
    /// key's verifier.
    fn signed_by(size: u64, root: &Hash, seed: u8) -> (String, VerifierKey) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let checkpoint = Checkpoint {
            origin: "vault/eu/test".into(),
            size,
            root: *root,
        };
        (
            signed(&checkpoint, "vault/eu/test", &key),
            verifier("vault/eu/test", &key),
        )
    }

    /// A log of 6 events, of which 1 and 4 name the subject; the page.
    fn page() -> (LedgerPage, VerifierKey) {
        let events: Vec<Vec<u8>> = (0..6)
            .map(|i| event(i, if i == 1 || i == 4 { PSEUDONYM } else { "cd" }))
            .collect();
        let leaves: Vec<Hash> = events.iter().map(|e| leaf_hash(e)).collect();
        let root = root_from_leaf_hashes(&leaves);
        let (note, key) = signed_by(6, &root, 7);
        let entries = [1u64, 4]
            .iter()
            .map(|&i| LedgerEntry {
                index: i,
                event: events[i as usize].clone(),
                proof: proof(&leaves, i as usize),
            })
            .collect();
        (
            LedgerPage {
                subject_pseudonym: PSEUDONYM.into(),
                checkpoint: note,
                entries,
                next_index: None,
                verifier_key: String::new(),
            },
            key,
        )
    }

    /// An RFC 6962 inclusion proof, computed the plain recursive way.
    fn proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        let k = if k == leaves.len() { k / 2 } else { k };
        if index < k {
            let mut p = proof(&leaves[..k], index);
            p.push(root_from_leaf_hashes(&leaves[k..]));
            p
        } else {
            let mut p = proof(&leaves[k..], index - k);
            p.push(root_from_leaf_hashes(&leaves[..k]));
            p
        }
    }

    #[test]
    fn an_honest_page_verifies_and_each_lie_is_named() {
        let (page, key) = page();
        assert_eq!(page.verify(&key).unwrap().size, 6);

        let mut forged = page.clone();
        forged.entries[1].event = event(4, "ab ");
        assert!(matches!(
            forged.verify(&key),
            Err(LedgerFault::NotIncluded { index: 4, .. })
        ));

        let mut moved = page.clone();
        moved.entries[0].index = 0;
        assert!(matches!(
            moved.verify(&key),
            Err(LedgerFault::NotIncluded { index: 0, .. })
        ));

        let mut other = page.clone();
        other.subject_pseudonym = "cd".into();
        assert_eq!(
            other.verify(&key),
            Err(LedgerFault::NotAboutSubject { index: 1 })
        );

        let mut swapped = page.clone();
        swapped.entries.swap(0, 1);
        assert_eq!(
            swapped.verify(&key),
            Err(LedgerFault::OutOfOrder { index: 1 })
        );

        let mut beyond = page.clone();
        beyond.next_index = Some(6);
        assert_eq!(
            beyond.verify(&key),
            Err(LedgerFault::OutOfOrder { index: 6 })
        );

        let (_, stranger) = signed_by(6, &[0; 32], 8);
        assert!(matches!(
            page.verify(&stranger),
            Err(LedgerFault::Checkpoint(_))
        ));
    }
}
