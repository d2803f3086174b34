//! Subject exports checked offline ([`verify_export`]), by code of this
//! crate only: the detached signature (a C2SP signed note by the vault's
//! audit key), the statement it signs (the bundle's length and SHA-256),
//! the bundle's layout and counts, and the access ledger inside it (each
//! event's inclusion proof in a checkpoint signed by the same key).
//!
//! The statement the signature covers, one item a line:
//!
//! ```text
//! vault-subject-export/v1
//! origin <the audit log's origin, the signing key's name>
//! subject <the subject's pseudonym, 64 hex digits>
//! records <n>
//! ledger-events <n>
//! bytes <the bundle's length>
//! sha256 <the bundle's SHA-256, 64 hex digits>
//! ```

use std::fmt;

use sha2::{Digest, Sha256};

use crate::audit::{open_note, Hash, LedgerEntry, LedgerFault, LedgerPage, VerifierKey};

/// The bundle's format (its `format` value) and the statement's first line.
pub const EXPORT_FORMAT: &str = "vault-subject-export/v1";

/// What a subject export's signature states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportStatement {
    /// The audit log's origin (the signing key's name).
    pub origin: String,
    /// The subject's pseudonym (hex), as audit events name it.
    pub subject_pseudonym: String,
    /// Records in the bundle.
    pub records: u64,
    /// Access-ledger events in the bundle.
    pub ledger_events: u64,
    /// The bundle's length in bytes.
    pub bytes: u64,
    /// The bundle's SHA-256.
    pub sha256: [u8; 32],
}

impl ExportStatement {
    /// Parses a statement: exactly the lines of the module docs.
    pub fn parse(text: &str) -> Result<Self, ExportFault> {
        let bad = |why: &'static str| ExportFault::Statement(why);
        let body = text.strip_suffix('\n').ok_or(bad("no final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [format, origin, subject, records, events, bytes, sha256] = lines[..] else {
            return Err(bad("not seven lines"));
        };
        if format != EXPORT_FORMAT {
            return Err(bad("not a vault-subject-export/v1 statement"));
        }
        fn item<'a>(line: &'a str, key: &'static str) -> Result<&'a str, ExportFault> {
            line.strip_prefix(key)
                .and_then(|l| l.strip_prefix(' '))
                .filter(|v| !v.is_empty())
                .ok_or(ExportFault::Statement(key))
        }
        let number = |line: &str, key: &'static str| -> Result<u64, ExportFault> {
            let v = item(line, key)?;
            if !v.bytes().all(|b| b.is_ascii_digit()) || (v.len() > 1 && v.starts_with('0')) {
                return Err(ExportFault::Statement(key));
            }
            v.parse().map_err(|_| ExportFault::Statement(key))
        };
        let hex32 = |line: &str, key: &'static str| -> Result<[u8; 32], ExportFault> {
            let v = item(line, key)?;
            if v.len() != 64 || v.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(ExportFault::Statement(key));
            }
            let mut out = [0u8; 32];
            hex::decode_to_slice(v, &mut out).map_err(|_| ExportFault::Statement(key))?;
            Ok(out)
        };
        Ok(ExportStatement {
            origin: item(origin, "origin")?.to_owned(),
            subject_pseudonym: hex::encode(hex32(subject, "subject")?),
            records: number(records, "records")?,
            ledger_events: number(events, "ledger-events")?,
            bytes: number(bytes, "bytes")?,
            sha256: hex32(sha256, "sha256")?,
        })
    }
}

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedExport {
    /// What the signature states.
    pub statement: ExportStatement,
    /// The subject's id, as the bundle names it.
    pub subject_id: String,
    /// The collections holding the subject's records.
    pub collections: Vec<String>,
    /// The tree size of the checkpoint the ledger is proved in.
    pub tree_size: u64,
}

/// Why an export does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportFault {
    /// The signature is not a note signed by the key (or does not verify).
    Signature(String),
    /// The signed text is not a well-formed statement (the item named).
    Statement(&'static str),
    /// The statement is signed under another name than the key's.
    Origin {
        /// The key's name.
        key: String,
        /// The statement's origin.
        statement: String,
    },
    /// The bundle's length or SHA-256 is not the statement's: it was
    /// changed, or it is another bundle.
    Digest,
    /// The bundle is not a well-formed export, or does not agree with its
    /// statement.
    Bundle(String),
    /// The access ledger inside does not verify.
    Ledger(LedgerFault),
}

impl fmt::Display for ExportFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportFault::Signature(why) => write!(f, "the signature does not verify: {why}"),
            ExportFault::Statement(item) => {
                write!(f, "the signed statement is malformed (at `{item}`)")
            }
            ExportFault::Origin { key, statement } => write!(
                f,
                "the statement names origin {statement}, the key is {key}'s"
            ),
            ExportFault::Digest => f.write_str(
                "the bundle is not the one signed: its length or SHA-256 differs from the \
                 signed statement's",
            ),
            ExportFault::Bundle(why) => write!(f, "the bundle is not a valid export: {why}"),
            ExportFault::Ledger(fault) => write!(f, "the access ledger does not verify: {fault}"),
        }
    }
}

impl std::error::Error for ExportFault {}

/// Checks a subject export offline: `signature` is a note signed by `key`
/// over a statement whose length and SHA-256 are `bundle`'s; the bundle is
/// a `vault-subject-export/v1` object whose origin, subject and counts are
/// the statement's; and every event of its access ledger is proved in its
/// checkpoint (signed by `key` too) and names the subject.
pub fn verify_export(
    bundle: &[u8],
    signature: &[u8],
    key: &VerifierKey,
) -> Result<VerifiedExport, ExportFault> {
    let text = open_note(signature, key).map_err(|e| ExportFault::Signature(e.to_string()))?;
    let statement = ExportStatement::parse(text)?;
    if statement.origin != key.name() {
        return Err(ExportFault::Origin {
            key: key.name().to_owned(),
            statement: statement.origin,
        });
    }
    let digest: [u8; 32] = Sha256::digest(bundle).into();
    if statement.bytes != bundle.len() as u64 || statement.sha256 != digest {
        return Err(ExportFault::Digest);
    }

    let bad = |why: String| ExportFault::Bundle(why);
    let doc: serde_json::Value =
        serde_json::from_slice(bundle).map_err(|e| bad(format!("not JSON: {e}")))?;
    let text_of = |key: &str| -> Result<&str, ExportFault> {
        doc[key]
            .as_str()
            .ok_or_else(|| bad(format!("no text `{key}`")))
    };
    if text_of("format")? != EXPORT_FORMAT {
        return Err(bad("its format is not vault-subject-export/v1".into()));
    }
    if text_of("origin")? != statement.origin {
        return Err(bad("its origin is not the statement's".into()));
    }
    if text_of("subject_pseudonym")? != statement.subject_pseudonym {
        return Err(bad("its subject is not the statement's".into()));
    }
    let subject_id = text_of("subject_id")?.to_owned();
    let collections: Vec<String> = doc["collections"]
        .as_array()
        .ok_or_else(|| bad("no `collections` list".into()))?
        .iter()
        .map(|c| c["name"].as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("a collection without a name".into()))?;
    let records = doc["records"]
        .as_array()
        .ok_or_else(|| bad("no `records` list".into()))?;
    for r in records {
        let known = r["collection"]
            .as_str()
            .is_some_and(|c| collections.iter().any(|k| k == c));
        if !known || !r["id"].is_string() || !r["fields"].is_object() {
            return Err(bad(
                "a record without an id, fields, or a listed collection".into(),
            ));
        }
    }
    let counts = &doc["counts"];
    if records.len() as u64 != statement.records
        || counts["records"].as_u64() != Some(statement.records)
    {
        return Err(bad(
            "its records are not as many as the statement says".into()
        ));
    }

    let ledger = &doc["access_ledger"];
    let checkpoint = ledger["checkpoint"]
        .as_str()
        .ok_or_else(|| bad("no access-ledger checkpoint".into()))?;
    let events = ledger["events"]
        .as_array()
        .ok_or_else(|| bad("no access-ledger events".into()))?;
    if events.len() as u64 != statement.ledger_events
        || counts["ledger_events"].as_u64() != Some(statement.ledger_events)
    {
        return Err(bad(
            "its ledger events are not as many as the statement says".into(),
        ));
    }
    let entries = events
        .iter()
        .map(|e| {
            let index = e["index"].as_u64()?;
            let event = e["event"].as_str()?.as_bytes().to_vec();
            let proof = e["proof"]
                .as_array()?
                .iter()
                .map(|h| {
                    let mut out: Hash = [0; 32];
                    hex::decode_to_slice(h.as_str()?, &mut out).ok()?;
                    Some(out)
                })
                .collect::<Option<Vec<Hash>>>()?;
            Some(LedgerEntry {
                index,
                event,
                proof,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("a ledger event without an index, an event or a proof".into()))?;
    let page = LedgerPage {
        subject_pseudonym: statement.subject_pseudonym.clone(),
        checkpoint: checkpoint.to_owned(),
        entries,
        next_index: None,
        verifier_key: String::new(),
    };
    let proved = page.verify(key).map_err(ExportFault::Ledger)?;
    Ok(VerifiedExport {
        statement,
        subject_id,
        collections,
        tree_size: proved.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::note::tests::{signature_line, signing_key, verifier};
    use crate::audit::{leaf_hash, Checkpoint};
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    const ORIGIN: &str = "vault/eu/0011";
    const PSEUDONYM: &str = "ab";

    /// A bundle of one record and a ledger of one event (a tree of one
    /// leaf: an empty proof), and its signature by `key`.
    fn signed_bundle(key: &SigningKey) -> (Vec<u8>, String) {
        let pseudonym = PSEUDONYM.repeat(32);
        let event =
            format!(r#"{{"index":0,"subjects":["{pseudonym}"],"operation":"export_subject"}}"#);
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            size: 1,
            root: leaf_hash(event.as_bytes()),
        };
        let note = crate::audit::note::tests::signed(&checkpoint, ORIGIN, key);
        let bundle = serde_json::json!({
            "format": EXPORT_FORMAT,
            "origin": ORIGIN,
            "subject_id": "alice",
            "subject_pseudonym": pseudonym,
            "collections": [{"name": "users"}],
            "records": [{"collection": "users", "id": "u1", "fields": {"n": {"string": "Ada"}}}],
            "access_ledger": {
                "checkpoint": note,
                "events": [{"index": 0, "event": event, "proof": []}],
            },
            "counts": {"records": 1, "ledger_events": 1},
        })
        .to_string()
        .into_bytes();
        let statement = format!(
            "{EXPORT_FORMAT}\norigin {ORIGIN}\nsubject {pseudonym}\nrecords 1\nledger-events \
             1\nbytes {}\nsha256 {}\n",
            bundle.len(),
            hex::encode(Sha256::digest(&bundle))
        );
        let signature = format!("{statement}\n{}", signature_line(ORIGIN, key, &statement));
        (bundle, signature)
    }

    #[test]
    fn a_signed_bundle_verifies_and_any_edit_does_not() {
        let key = signing_key();
        let (bundle, signature) = signed_bundle(&key);
        let v = verify_export(&bundle, signature.as_bytes(), &verifier(ORIGIN, &key)).unwrap();
        assert_eq!(
            (v.subject_id.as_str(), v.statement.records, v.tree_size),
            ("alice", 1, 1)
        );

        // Every one-byte change of the bundle is caught.
        for at in 0..bundle.len() {
            let mut edited = bundle.clone();
            edited[at] ^= 0x01;
            assert_eq!(
                verify_export(&edited, signature.as_bytes(), &verifier(ORIGIN, &key)),
                Err(ExportFault::Digest),
                "byte {at}"
            );
        }
        // Another key, another name.
        let other = signing_key();
        assert!(matches!(
            verify_export(&bundle, signature.as_bytes(), &verifier(ORIGIN, &other)),
            Err(ExportFault::Signature(_))
        ));
        assert!(matches!(
            verify_export(
                &bundle,
                signature.as_bytes(),
                &verifier("vault/eu/other", &key)
            ),
            Err(ExportFault::Signature(_))
        ));
    }

    #[test]
    fn a_statement_is_exactly_its_seven_lines() {
        let key = signing_key();
        let (bundle, signature) = signed_bundle(&key);
        let statement = signature.split("\n\n").next().unwrap().to_owned() + "\n";
        assert!(ExportStatement::parse(&statement).is_ok());
        for (from, to) in [
            ("records 1", "records 01"),
            ("records 1", "records -1"),
            ("records 1", "records  1"),
            ("ledger-events 1", "ledger-events"),
            ("vault-subject-export/v1", "vault-subject-export/v2"),
            ("subject ab", "subject AB"),
            ("origin ", "origin: "),
        ] {
            let bad = statement.replacen(from, to, 1);
            assert!(ExportStatement::parse(&bad).is_err(), "{to}");
        }
        assert!(ExportStatement::parse(&(statement.clone() + "extra\n")).is_err());
        assert!(ExportStatement::parse(statement.trim_end()).is_err());
        // A statement with other counts than the bundle's, signed: refused.
        let lying = statement.replace("records 1", "records 2");
        let signature = format!("{lying}\n{}", signature_line(ORIGIN, &key, &lying));
        assert!(matches!(
            verify_export(&bundle, signature.as_bytes(), &verifier(ORIGIN, &key)),
            Err(ExportFault::Bundle(_))
        ));
        // A checkpoint signed by the key is not a statement.
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            size: 1,
            root: [0; 32],
        };
        let note = crate::audit::note::tests::signed(&checkpoint, ORIGIN, &key);
        assert!(matches!(
            verify_export(&bundle, note.as_bytes(), &verifier(ORIGIN, &key)),
            Err(ExportFault::Statement(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_refused_without_a_panic(
            bundle in proptest::collection::vec(any::<u8>(), 0..512),
            signature in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let key = verifier(ORIGIN, &SigningKey::from_bytes(&[7; 32]));
            prop_assert!(verify_export(&bundle, &signature, &key).is_err());
        }
    }
}
