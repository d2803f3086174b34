//! Fuzz entry points: each takes arbitrary bytes from outside and runs
//! them through one decoder the vault uses on such bytes. Each must
//! return (with an error, usually) and never panic, whatever the input.
//! The cargo-fuzz targets in `fuzz/` call these, and a unit test replays
//! the committed corpus (`fuzz/corpus/`) through them on every CI run.
//! Only test builds and fuzzing builds have this module: the `fuzzing`
//! feature (what `fuzz/` enables, and what `scripts/test` checks builds
//! without RocksDB) or `--cfg fuzzing` (cargo-fuzz's flag).
//!
//! The `config` target needs the `rocksdb` feature (the configuration
//! names the store's and the service's options): it exists in test builds
//! and in `fuzz/` with `--features rocksdb`.

use std::sync::OnceLock;

use aes_gcm::{Aes256Gcm, KeyInit};

use crate::audit::{checkpoint, Event};
use crate::crypto::{open_field, EnvelopeHeader, FieldAad};
use crate::keys::{
    signing_key, unwrap_subject_key, wrapping_version, ErasureReceipt, Keyring, Region, Rewrapper,
    ShareCollector, UnsealShare,
};
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
    #[cfg(feature = "rocksdb")]
    ("config", config),
    ("unseal_share", unseal_share),
    ("wrapped_key", wrapped_key),
    ("erasure_receipt", erasure_receipt),
    ("rewrap_job", rewrap_job),
    ("reindex_job", reindex_job),
    ("value", value),
    ("share_recipients", share_recipients),
    ("cosignature", cosignature),
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

/// The subject, and the version of its key, whose wrapped key the
/// `wrapped_key` target unwraps (its seed is wrapped for them).
const WRAPPED_SUBJECT: &crate::keys::SubjectName = &[1; 32];
const WRAPPED_VERSION: u32 = 1;

/// The fixed keyring of the `wrapped_key` and `erasure_receipt` targets
/// ([`Keyring::fixed_for_fuzzing`], region eu), and the same keyring after
/// a root-key rotation (what the re-wrap job wraps to).
fn fixed_keyrings() -> Option<&'static (Keyring, Keyring)> {
    static RINGS: OnceLock<Option<(Keyring, Keyring)>> = OnceLock::new();
    RINGS
        .get_or_init(|| {
            let region: Region = "eu".parse().ok()?;
            let fixed = Keyring::fixed_for_fuzzing(region);
            let mut rotated = fixed.clone();
            rotated.rotate_root();
            Some((fixed, rotated))
        })
        .as_ref()
}

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
    let _ = Keyring::peek_sealing(data);
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

/// The configuration file (TOML text), parsed and checked whole as at
/// start. A configuration naming a `policy_file` is only decoded, not
/// checked: the check reads that file, any path the input names
/// (`/dev/zero` included).
#[cfg(feature = "rocksdb")]
pub fn config(data: &[u8]) {
    use crate::config::Config;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match toml::from_str::<Config>(text) {
        Ok(c) if c.policy_file.is_some() => {
            let _ = c.region();
        }
        _ => {
            let _ = Config::parse(text);
        }
    }
}

/// Unseal shares in their text form, one per line, as custodians hand
/// them in: each is parsed (what parses encodes to a share that parses
/// the same), given to one collector, and the key is rebuilt once enough
/// are in.
pub fn unseal_share(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut collector = ShareCollector::new();
    for line in text.lines().take(32) {
        let Ok(share) = UnsealShare::parse(line) else {
            continue;
        };
        let again = share.encode();
        let back = UnsealShare::parse(&again).expect("an encoded share parses");
        assert_eq!(
            back.encode().as_str(),
            again.as_str(),
            "a share changed through encode and parse"
        );
        if collector.add(share).is_ok() {
            let _ = collector.combine();
        }
    }
}

/// The age recipients of an init or rekey request, one per line, as
/// custodians give them: checked as the vault checks them (one per share),
/// and what passes is checked again from its canonical form.
pub fn share_recipients(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.lines().take(255).collect();
    let Ok(count) = u8::try_from(lines.len()) else {
        return;
    };
    if let Ok(recipients) = crate::keys::ShareRecipients::parse(&lines, count) {
        assert_eq!(recipients.len(), lines.len());
        let again = crate::keys::ShareRecipients::parse(&lines, count).expect("parses again");
        assert!(again == recipients, "a recipient list parsed differently");
    }
}

/// A stored wrapped subject key (v2), as read from the store: its root
/// key version, the unwrap under the fixed keyring, and the re-wrap job's
/// re-wrap to the rotated keyring. What unwraps re-wraps to a key that
/// unwraps to the same key.
pub fn wrapped_key(data: &[u8]) {
    let _ = wrapping_version(data);
    let Some((fixed, rotated)) = fixed_keyrings() else {
        return;
    };
    let unwrapped = unwrap_subject_key(fixed, WRAPPED_SUBJECT, WRAPPED_VERSION, data);
    let mut rewrapper = Rewrapper::new(rotated);
    let rewrapped = rewrapper.rewrap(WRAPPED_SUBJECT, WRAPPED_VERSION, data);
    if let (Ok(key), Ok(Some(again))) = (&unwrapped, &rewrapped) {
        let back = unwrap_subject_key(rotated, WRAPPED_SUBJECT, WRAPPED_VERSION, again)
            .expect("a re-wrapped key unwraps");
        assert!(
            back.expose_secret() == key.expose_secret(),
            "a re-wrap changed the key"
        );
    }
}

/// A stored erasure receipt (v1): what decodes encodes back to the same
/// bytes; its signature is checked under the fixed keyring's key.
pub fn erasure_receipt(data: &[u8]) {
    if let Ok(receipt) = ErasureReceipt::decode(data) {
        assert_eq!(
            receipt.encode(),
            data,
            "a decoded receipt encodes to other bytes"
        );
        if let Some((fixed, _)) = fixed_keyrings() {
            let _ = receipt.verify(&signing_key(fixed).verifying_key());
        }
    }
}

/// The re-wrap job's persisted record (v1, with its cursor): what decodes
/// encodes back to the same bytes.
pub fn rewrap_job(data: &[u8]) {
    if let Some(again) = crate::engine::reencode_job_record(data) {
        assert_eq!(again, data, "a decoded job record encodes to other bytes");
    }
}

/// The blind-index rebuild's persisted job record (v1, with its cursor):
/// what decodes encodes back to the same bytes.
pub fn reindex_job(data: &[u8]) {
    if let Some(again) = crate::engine::reencode_reindex_job_record(data) {
        assert_eq!(again, data, "a decoded job record encodes to other bytes");
    }
}

/// The checkpoint the `cosignature` target's inputs cosign (signed by a
/// fixed key), the fixed witness's key seed, and the time it checks at.
const COSIGNED_SIZE: u64 = 5;
const WITNESS_SEED: [u8; 32] = [4; 32];
const COSIGN_NOW: u64 = 1_800_000_000;

fn cosigned_checkpoint() -> String {
    checkpoint::sign(
        "vault/eu/fuzz",
        COSIGNED_SIZE,
        &[9; 32],
        &ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
    )
}

/// The fixed witness's verifier key (name `w.example/fuzz`).
fn fuzz_witness() -> Option<checkpoint::WitnessKey> {
    use base64::Engine as _;
    let public = ed25519_dalek::SigningKey::from_bytes(&WITNESS_SEED)
        .verifying_key()
        .to_bytes();
    let mut blob = vec![4u8];
    blob.extend_from_slice(&public);
    format!(
        "w.example/fuzz+{}+{}",
        hex::encode(checkpoint::cosigner_key_id("w.example/fuzz", &public)),
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
    .parse()
    .ok()
}

/// A checkpoint a witness sends with its cosignature
/// (`AuditService.AddCosignature`), merged into the stored one: what is
/// taken keeps the stored checkpoint's text and still parses.
pub fn cosignature(data: &[u8]) {
    let Ok(submitted) = std::str::from_utf8(data) else {
        return;
    };
    let Some(witness) = fuzz_witness() else {
        return;
    };
    let stored = cosigned_checkpoint();
    if let Ok((note, taken)) =
        checkpoint::merge_cosignatures(&stored, submitted, &[witness], COSIGN_NOW)
    {
        assert!(!taken.is_empty(), "a merge that took no cosignature");
        assert_eq!(
            checkpoint::parse(note.as_bytes()),
            checkpoint::parse(stored.as_bytes()),
            "a merge changed the checkpoint"
        );
        assert!(
            note.starts_with(&stored),
            "a merge dropped the vault's line"
        );
    }
}

/// A field value's plaintext encoding, as decrypted: what decodes must
/// encode back to the same bytes.
pub fn value(data: &[u8]) {
    if let Ok(v) = crate::engine::Value::decode(data) {
        assert_eq!(
            v.encode().as_slice(),
            data,
            "a decoded value encodes to other bytes"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The names of the entries of `dir` (files: without `.rs`), sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".rs").unwrap_or(&name).to_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Every entry point has a cargo-fuzz target, a `[[bin]]` in
    /// `fuzz/Cargo.toml` and a corpus, and nothing in `fuzz/` names a
    /// target that is not here.
    #[test]
    fn every_target_has_a_fuzz_target_and_a_corpus() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut targets: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
        targets.sort();
        assert_eq!(names_in(&fuzz.join("fuzz_targets")), targets);
        assert_eq!(names_in(&fuzz.join("corpus")), targets);
        let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
        for name in &targets {
            let bin = format!("name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\"\n");
            assert!(
                manifest.contains(&bin),
                "no [[bin]] {name} in fuzz/Cargo.toml"
            );
            let source =
                std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs"))).unwrap();
            assert!(
                source.contains(&format!("vault_server::fuzzing::{name}(data)")),
                "fuzz_targets/{name}.rs does not call its entry point"
            );
        }
    }

    /// The seeds still reach the deep checks of their targets: the fixed
    /// keyrings exist, the wrapped-key seed unwraps and re-wraps, the
    /// receipt seed verifies, and every other seed decodes. Without this a
    /// drifted seed or keyring would leave those checks unreached.
    #[test]
    fn the_seeds_reach_their_targets_deep_checks() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let seed = |target: &str, name: &str| {
            std::fs::read(root.join(target).join(format!("seed-{name}"))).unwrap()
        };
        let (fixed, rotated) = fixed_keyrings().expect("the fixed keyrings");
        let wrapped = seed("wrapped_key", "v2");
        let key = unwrap_subject_key(fixed, WRAPPED_SUBJECT, WRAPPED_VERSION, &wrapped)
            .expect("the wrapped-key seed unwraps");
        let again = Rewrapper::new(rotated)
            .rewrap(WRAPPED_SUBJECT, WRAPPED_VERSION, &wrapped)
            .unwrap()
            .expect("it re-wraps under the rotated keyring");
        let back = unwrap_subject_key(rotated, WRAPPED_SUBJECT, WRAPPED_VERSION, &again).unwrap();
        assert!(back.expose_secret() == key.expose_secret());
        let receipt = ErasureReceipt::decode(&seed("erasure_receipt", "signed")).unwrap();
        receipt
            .verify(&signing_key(fixed).verifying_key())
            .expect("the receipt seed verifies");
        assert!(crate::engine::reencode_job_record(&seed("rewrap_job", "part-way")).is_some());
        let reindex = seed("reindex_job", "part-way");
        assert_eq!(
            crate::engine::reencode_reindex_job_record(&reindex).as_deref(),
            Some(crate::engine::reindex_job_record_seed().as_slice()),
            "the reindex_job seed is the record the vault writes"
        );
        let cosigned = String::from_utf8(seed("cosignature", "cosigned")).unwrap();
        let (_, taken) = checkpoint::merge_cosignatures(
            &cosigned_checkpoint(),
            &cosigned,
            &[fuzz_witness().unwrap()],
            COSIGN_NOW,
        )
        .expect("the cosignature seed is taken");
        assert_eq!(taken.len(), 1);
        let shares = String::from_utf8(seed("unseal_share", "two-of-three")).unwrap();
        assert!(shares.lines().all(|l| UnsealShare::parse(l).is_ok()));
        let recipients = String::from_utf8(seed("share_recipients", "two")).unwrap();
        let lines: Vec<&str> = recipients.lines().collect();
        assert!(crate::keys::ShareRecipients::parse(&lines, 2).is_ok());
        for v in ["string", "int64", "double", "bool", "bytes", "timestamp"] {
            crate::engine::Value::decode(&seed("value", v)).unwrap();
        }
    }

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

    /// A small mutation fuzzer for where cargo-fuzz is not installed: each
    /// target's committed seeds (`seed-*`), mutated (bits flipped, bytes
    /// set, inserted, deleted, truncated, duplicated, spliced with another
    /// seed) a thousand times (`VAULT_MUTATIONS` to change), must never
    /// panic. Reproducible: the seed of the mutations is fixed unless
    /// `VAULT_MUTATION_SEED` is set.
    #[test]
    fn mutated_seeds_never_panic() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let per_target: usize = std::env::var("VAULT_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let seed: u64 = std::env::var("VAULT_MUTATION_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(13);
        let mut rng = StdRng::seed_from_u64(seed);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, target) in TARGETS {
            let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(name))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("seed-")
                })
                .map(|p| std::fs::read(p).unwrap())
                .collect();
            assert!(!seeds.is_empty(), "{name} has no seed");
            for _ in 0..per_target {
                let mut input = seeds[rng.gen_range(0..seeds.len())].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let n = input.len();
                    match rng.gen_range(0..7) {
                        0 if n > 0 => {
                            let at = rng.gen_range(0..n);
                            input[at] ^= 1 << rng.gen_range(0..8);
                        }
                        1 if n > 0 => {
                            let at = rng.gen_range(0..n);
                            input[at] = rng.gen();
                        }
                        2 => {
                            let at = rng.gen_range(0..=n);
                            let extra: Vec<u8> =
                                (0..rng.gen_range(1..9)).map(|_| rng.gen()).collect();
                            input.splice(at..at, extra);
                        }
                        3 if n > 0 => {
                            let from = rng.gen_range(0..n);
                            let to = rng.gen_range(from..=n.min(from + 16));
                            input.drain(from..to);
                        }
                        4 => input.truncate(rng.gen_range(0..=n)),
                        5 if n > 0 => {
                            let from = rng.gen_range(0..n);
                            let to = rng.gen_range(from..=n);
                            let chunk = input[from..to].to_vec();
                            let at = rng.gen_range(0..=n);
                            input.splice(at..at, chunk);
                        }
                        _ => {
                            let other = &seeds[rng.gen_range(0..seeds.len())];
                            let cut = rng.gen_range(0..=input.len());
                            let from = rng.gen_range(0..=other.len());
                            input.truncate(cut);
                            input.extend_from_slice(&other[from..]);
                        }
                    }
                }
                target(&input);
            }
        }
        println!(
            "mutated seeds: {per_target} inputs over each of {} targets (VAULT_MUTATION_SEED={seed}), 0 panics",
            TARGETS.len()
        );
    }

    /// The fixed checkpoint with the fixed witness's cosignature line.
    fn cosigned_seed() -> String {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        let stored = cosigned_checkpoint();
        let text = &stored[..=stored.find("\n\n").unwrap()];
        let key = ed25519_dalek::SigningKey::from_bytes(&WITNESS_SEED);
        let time = COSIGN_NOW - 60;
        let signature = key.sign(format!("cosignature/v1\ntime {time}\n{text}").as_bytes());
        let public = key.verifying_key().to_bytes();
        let mut blob = checkpoint::cosigner_key_id("w.example/fuzz", &public).to_vec();
        blob.extend_from_slice(&time.to_be_bytes());
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{stored}\u{2014} w.example/fuzz {}\n",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
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
            subject: [1; 32],
            key_version: 3,
            written_ms: Some(1_700_000_000_000),
            ids: seal_field(&cipher, 3, &aad, b"ids"),
            fields: ["country", "email"]
                .iter()
                .map(|n| StoredField {
                    name: (*n).to_owned(),
                    envelope: seal_field(&cipher, 3, &aad, b"FR"),
                })
                .collect(),
            tag: [5; 32],
        };
        write("stored_record", "v3-two-fields", &record.encode());
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
        write("config", "example", CONFIG_SEED.as_bytes());
        crate::config::Config::parse(CONFIG_SEED).expect("the config seed parses");
        let mut unseal = KEYRING_UNSEAL_KEY;
        let shares = crate::keys::split(&Key256::take(&mut unseal), 2, 3).unwrap();
        let lines: Vec<String> = shares
            .iter()
            .map(|s| s.encode().as_str().to_owned())
            .collect();
        write("unseal_share", "one", lines[0].as_bytes());
        write(
            "unseal_share",
            "two-of-three",
            lines[1..].join("\n").as_bytes(),
        );
        // age's own X25519 test recipients, and a recipient of another kind.
        let x25519 = "age1t7rxyev2z3rw82stdlrrepyc39nvn86l5078zqkf5uasdy86jp6svpy7pa\n\
                      age1ysxuaeqlk7xd8uqsh8lsnfwt9jzzjlqf49ruhpjrrj5yatlcuf7qke4pqe\n";
        write("share_recipients", "two", x25519.as_bytes());
        write(
            "share_recipients",
            "not-x25519",
            b"age1t7rxyev2z3rw82stdlrrepyc39nvn86l5078zqkf5uasdy86jp6svpy7pa\n\
              age1tag1qt8lw0ual6avlwmwatk888yqnmdamm7xfd0wak53ut6elz5c4swx2y\n",
        );
        let (fixed, _) = fixed_keyrings().unwrap();
        let mut subject_key = [6u8; 32];
        let wrapped = crate::keys::wrap_subject_key(
            fixed,
            WRAPPED_SUBJECT,
            WRAPPED_VERSION,
            &Key256::take(&mut subject_key),
        )
        .unwrap();
        assert!(unwrap_subject_key(fixed, WRAPPED_SUBJECT, WRAPPED_VERSION, &wrapped).is_ok());
        write("wrapped_key", "v2", &wrapped);
        let receipt = ErasureReceipt::sign(
            fixed,
            "s1",
            2,
            7,
            1_700_000_000,
            crate::keys::Shredded {
                bucket: 1,
                epoch: 1,
                keys_rewrapped: 12,
            },
        );
        receipt
            .verify(&signing_key(fixed).verifying_key())
            .expect("the receipt seed verifies");
        write("erasure_receipt", "signed", &receipt.encode());
        write("rewrap_job", "part-way", &crate::engine::job_record_seed());
        write(
            "reindex_job",
            "part-way",
            &crate::engine::reindex_job_record_seed(),
        );
        write("cosignature", "cosigned", cosigned_seed().as_bytes());
        for (name, v) in [
            (
                "string",
                crate::engine::Value::String("Ada Lovelace".into()),
            ),
            ("int64", crate::engine::Value::Int64(-42)),
            ("double", crate::engine::Value::Double(2.5)),
            ("bool", crate::engine::Value::Bool(true)),
            ("bytes", crate::engine::Value::Bytes(vec![0, 255])),
            (
                "timestamp",
                crate::engine::Value::Timestamp {
                    seconds: -4_917_000_000,
                    nanos: 5,
                },
            ),
        ] {
            write("value", name, &v.encode());
        }
    }

    /// The config target's seed: every section, no policy file.
    const CONFIG_SEED: &str = r#"region = "eu"
listen = "0.0.0.0:8200"
data_dir = "/var/lib/vault"
keyring_file = "/etc/vault/keyring"
danger_unsynced_writes = false
key_cache_capacity = 10000

[limits]
max_record_bytes = 65536
max_batch_records = 500
max_batch_bytes = 4194304

[rewrap]
batch_size = 1000
keys_per_second = 100000

[audit]
checkpoint_every_events = 1000
checkpoint_interval_ms = 60000

[tls]
cert_file = "/etc/vault/server.pem"
key_file = "/etc/vault/server.key"
client_ca_file = "/etc/vault/clients-ca.pem"

[[principals]]
name = "spiffe://eu.example/billing-service"
roles = ["reader", "writer"]

[[tokens]]
principal = "billing-service"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
roles = ["reader", "writer"]
expires_at = "2027-01-01T00:00:00Z"

[[tokens]]
principal = "custodian-alice"
sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
roles = ["custodian"]
revoked = true
"#;
}
