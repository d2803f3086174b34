//! Fuzz entry points: each takes arbitrary bytes from outside and runs
//! them through one decoder the vault uses on such bytes. Each must
//! return (with an error, usually) and never panic, whatever the input.
//! The cargo-fuzz targets in `fuzz/` call these (cargo-fuzz builds with
//! `--cfg fuzzing`, the only non-test build that has this module), and a
//! unit test replays the committed corpus (`fuzz/corpus/`) through them on
//! every CI run.

use aes_gcm::{Aes256Gcm, KeyInit};

use crate::audit::{checkpoint, Event};
use crate::crypto::{open_field, EnvelopeHeader, FieldAad};
use crate::keys::{Keyring, Region};
use crate::policy::Policy;
use crate::storage::StoredRecord;

/// One fuzz entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs` and
/// of the corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("stored_record", stored_record),
    ("keyring_file", keyring_file),
    ("policy_file", policy_file),
    ("audit_entry", audit_entry),
];

/// The envelope target's field key and AAD (its seeds are sealed with them).
const ENVELOPE_KEY: [u8; 32] = [7; 32];
const ENVELOPE_AAD: FieldAad<'static> = FieldAad {
    region: "eu",
    collection: "users",
    record_id: "r1",
    field: "email",
};

/// The unseal key the keyring target opens files with (its seed is sealed
/// under it).
const KEYRING_UNSEAL_KEY: [u8; 32] = [9; 32];

/// A field envelope (v1) as read from the store: the header, then the
/// AEAD open under a fixed key and AAD.
pub fn envelope(data: &[u8]) {
    let _ = EnvelopeHeader::parse(data);
    let cipher = Aes256Gcm::new(&ENVELOPE_KEY.into());
    let _ = open_field(&cipher, &ENVELOPE_AAD, data);
}

/// A stored record (v1): what decodes must encode back to the same bytes.
pub fn stored_record(data: &[u8]) {
    if let Ok((record, body)) = StoredRecord::decode(data) {
        let again = record.encode();
        assert_eq!(again, data, "a decoded record encodes to other bytes");
        assert_eq!(&again[..body.len()], body);
    }
}

/// A keyring file (its clear header, then the sealed contents under a
/// fixed unseal key), and the decrypted contents' sections decoder.
pub fn keyring_file(data: &[u8]) {
    let _ = Keyring::peek(data);
    let region: Region = match "eu".parse() {
        Ok(r) => r,
        Err(_) => return,
    };
    let mut bytes = KEYRING_UNSEAL_KEY;
    let key = crate::crypto::Key256::take(&mut bytes);
    let _ = Keyring::unseal(data, &key, &region);
    let _ = Keyring::decode_contents_for_fuzzing(data);
}

/// A policy file (TOML text).
pub fn policy_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text, "fuzz");
    }
}

/// An audit entry as the vault reads it back at open: the event JSON and
/// a stored checkpoint note.
pub fn audit_entry(data: &[u8]) {
    if let Ok(event) = serde_json::from_slice::<Event>(data) {
        // What parses encodes again, to what parses as the same event.
        let again = serde_json::to_vec(&event).expect("an event encodes");
        let back: Event = serde_json::from_slice(&again).expect("an encoded event parses");
        assert_eq!(back, event, "an event changed through encode and parse");
    }
    let _ = checkpoint::parse(data);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Replays every committed corpus file of every target (what CI runs
    /// where no fuzzer is installed), and counts them.
    #[test]
    fn the_committed_corpus_replays_without_a_panic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut total = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
            let mut n = 0;
            for entry in entries {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n > 0, "the corpus of {name} is empty");
            total += n;
        }
        println!(
            "fuzz corpus replay: {total} inputs over {} targets",
            TARGETS.len()
        );
    }

    /// Writes the seed corpus: one well-formed input per decoder, made by
    /// the vault's own encoders (the fuzzer mutates from there). Run once:
    /// `cargo test --workspace -- --ignored write_the_seed_corpus`.
    #[test]
    #[ignore = "writes fuzz/corpus/*/seed-*; run by hand"]
    fn write_the_seed_corpus() {
        use crate::crypto::{seal_field, Key256};
        use crate::keys::Custody;
        use crate::storage::StoredField;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        };
        let cipher = Aes256Gcm::new(&ENVELOPE_KEY.into());
        let aad = ENVELOPE_AAD;
        write(
            "envelope",
            "ok",
            &seal_field(&cipher, 1, &aad, b"ada@example.eu"),
        );
        write("envelope", "empty", &seal_field(&cipher, 7, &aad, b""));
        let record = StoredRecord {
            subject_id: "s1".into(),
            key_version: 3,
            fields: ["country", "email"]
                .iter()
                .map(|n| StoredField {
                    name: (*n).to_owned(),
                    envelope: seal_field(&cipher, 3, &aad, b"FR"),
                })
                .collect(),
            tag: [5; 32],
        };
        write("stored_record", "two-fields", &record.encode());
        let keyring = Keyring::generate(
            "eu".parse().unwrap(),
            Custody {
                set_id: [1; 16],
                threshold: 2,
                shares: 3,
            },
        );
        let mut unseal = KEYRING_UNSEAL_KEY;
        let file = keyring.seal(&Key256::take(&mut unseal));
        write("keyring_file", "sealed", &file);
        write("keyring_file", "contents", &keyring.contents_for_seed());
        write(
            "policy_file",
            "example",
            crate::policy::TEST_POLICY.as_bytes(),
        );
        let mut ev = Event::new("svc", Some("billing"), "read", Some("00ff"));
        ev.collection = Some("users".into());
        ev.records = vec!["ab".repeat(32)];
        ev.fields = vec!["email".into()];
        write("audit_entry", "event", &serde_json::to_vec(&ev).unwrap());
        write(
            "audit_entry",
            "checkpoint",
            "eu.vault.example/audit\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\u{2014} eu.vault.example/audit AAAAAA==\n"
                .as_bytes(),
        );
    }
}
