//! Subject export: the answer to a person's access and portability request
//! (GDPR Art. 15 and 20). Everything the vault holds of one data subject,
//! across every collection of the region, with the subject's access ledger
//! (every audit event naming the subject, each with its inclusion proof),
//! as one JSON bundle the vault writes and signs.
//!
//! The caller needs the `export` operation (without a collection, as the
//! access ledger does) and, on every collection that holds a record of the
//! subject, an export rule for its purpose: an answer that leaves a
//! collection out would look complete and not be, so the export is refused
//! instead. Fields come out at the levels the export rules give them
//! (plain, masked, or listed as redacted and never decrypted).
//!
//! The export's own event (the subject's pseudonym, the collections, the
//! number of records) is committed before any record is read, so the
//! ledger in the bundle ends with it; a bundle cut short by a closed
//! connection is still on record, and its stop is a second event. Each
//! record is charged to the caller's read budgets before it is written (a
//! budget used up stops the export), and exporting a honey subject raises
//! the honey alert, as reading one does.
//!
//! Bundle (UTF-8 JSON, one object, the keys in this order; `docs/subject-export.md`):
//!
//! ```text
//! { "format": "vault-subject-export/v1", "region", "origin" (the audit log's),
//!   "subject_id", "subject_pseudonym" (hex, as audit events name it),
//!   "exported_at_ms", "principal", "purpose", "request_id",
//!   "collections": [schema of each collection holding a record of the subject],
//!   "records": [{ "collection", "id", "written_at_ms" (null if unknown),
//!                 "expired" (past the collection's time to live: held,
//!                 unreadable, until purged), "fields": { name: typed value },
//!                 "masked": [names], "redacted": [names] }],
//!   "access_ledger": { "checkpoint" (signed note), "verifier_key",
//!                      "events": [{ "index", "event" (the stored event, a JSON
//!                                   text), "proof": [hex hashes, leaf up] }] },
//!   "counts": { "records", "ledger_events" } }
//! ```
//!
//! A typed value is an object with one key: `{"string": "…"}`,
//! `{"int64": "123"}` (a decimal string: JSON numbers lose precision past
//! 2^53), `{"double": 1.5}` (or `"NaN"`, `"Infinity"`, `"-Infinity"`),
//! `{"bool": true}`, `{"bytes": "<base64>"}`,
//! `{"timestamp": {"seconds": …, "nanos": …}}`.
//!
//! Signature: a C2SP signed note by the audit signing key (the key of the
//! checkpoints, under the log's origin) over a statement that names the
//! bundle by its SHA-256 and length:
//!
//! ```text
//! vault-subject-export/v1
//! origin <origin>
//! subject <pseudonym hex>
//! records <n>
//! ledger-events <n>
//! bytes <bundle length>
//! sha256 <hex SHA-256 of the bundle>
//! ```
//!
//! A checkpoint's second line is a tree size, a statement's is `origin …`,
//! so neither passes for the other. The statement is checked offline by
//! `vaultctl subject verify-export` (vault-client's own code).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{validate_id, Collection, Engine, Event, Record, Value};
use crate::policy::{Caller, FieldView, Operation, Redaction};
use crate::storage::{split_record_key, Table, WriteSet};
use crate::{Error, Result};

/// The bundle's format, its first key's value and the statement's first line.
pub const EXPORT_FORMAT: &str = "vault-subject-export/v1";
/// Bundle bytes per chunk handed to the sink (a record may make one larger).
const CHUNK_BYTES: usize = 64 * 1024;
/// Ledger events read (and proved) at a time.
const LEDGER_PAGE: usize = 256;

/// A piece of the bundle, in order, and how far the export is.
#[derive(Debug)]
pub struct ExportChunk {
    /// The next bytes of the bundle (wiped when dropped).
    pub bytes: Zeroizing<Vec<u8>>,
    /// Records written so far.
    pub records_done: u64,
    /// Records the subject → records index listed when the export began
    /// (an upper bound: a record deleted meanwhile is not written).
    pub records_total: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The signed statement (a C2SP signed note) naming the bundle.
    pub signature: String,
    /// Records in the bundle.
    pub records: u64,
    /// Ledger events in the bundle.
    pub ledger_events: u64,
    /// The bundle's length.
    pub bytes: u64,
    /// The bundle's SHA-256.
    pub sha256: [u8; 32],
}

/// The statement an export's signature covers (see the module docs).
pub fn export_statement(
    origin: &str,
    pseudonym: &[u8; 32],
    records: u64,
    ledger_events: u64,
    bytes: u64,
    sha256: &[u8; 32],
) -> String {
    format!(
        "{EXPORT_FORMAT}\norigin {origin}\nsubject {}\nrecords {records}\nledger-events \
         {ledger_events}\nbytes {bytes}\nsha256 {}\n",
        hex::encode(pseudonym),
        hex::encode(sha256)
    )
}

/// Writes the bundle in chunks to the sink, hashing what it writes.
struct BundleWriter<'a> {
    buf: Zeroizing<Vec<u8>>,
    hash: Sha256,
    bytes: u64,
    records_done: u64,
    records_total: u64,
    sink: &'a mut dyn FnMut(ExportChunk) -> Result<()>,
}

impl BundleWriter<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        self.flush_full()
    }

    fn json(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut *self.buf, value)
            .map_err(|e| Error::Storage(format!("could not write the export: {e}")))?;
        self.flush_full()
    }

    /// `,"key":value` (or `"key":value` first in an object).
    fn member(&mut self, first: bool, key: &str, value: &impl Serialize) -> Result<()> {
        if !first {
            self.raw(b",")?;
        }
        self.json(&key)?;
        self.raw(b":")?;
        self.json(value)
    }

    /// Makes room for `bytes` more without the buffer growing: a grown
    /// buffer would leave its old plaintext in freed memory.
    fn reserve(&mut self, bytes: usize) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < bytes {
            self.flush()?;
            if self.buf.capacity() < bytes {
                self.buf = Zeroizing::new(Vec::with_capacity(bytes));
            }
        }
        Ok(())
    }

    fn flush_full(&mut self) -> Result<()> {
        if self.buf.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let bytes = std::mem::replace(
            &mut self.buf,
            Zeroizing::new(Vec::with_capacity(2 * CHUNK_BYTES)),
        );
        self.hash.update(bytes.as_slice());
        self.bytes += bytes.len() as u64;
        (self.sink)(ExportChunk {
            bytes,
            records_done: self.records_done,
            records_total: self.records_total,
        })
    }
}

/// A record as the bundle shows it, with when it was written and whether
/// it is past its collection's time to live (held, unreadable, until the
/// sweeper purges it).
struct RecordOut<'a> {
    record: &'a Record,
    written_ms: Option<u64>,
    expired: bool,
}

impl Serialize for RecordOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let r = self.record;
        let mut st = s.serialize_struct("Record", 7)?;
        st.serialize_field("collection", &r.collection)?;
        st.serialize_field("id", &r.id)?;
        st.serialize_field("written_at_ms", &self.written_ms)?;
        st.serialize_field("expired", &self.expired)?;
        st.serialize_field("fields", &FieldsOut(&r.fields))?;
        st.serialize_field("masked", &r.masked)?;
        st.serialize_field("redacted", &r.redacted)?;
        st.end()
    }
}

struct FieldsOut<'a>(&'a BTreeMap<String, Value>);

impl Serialize for FieldsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            m.serialize_entry(name, &ValueOut(value))?;
        }
        m.end()
    }
}

/// A typed value: an object with one key, the type's name.
struct ValueOut<'a>(&'a Value);

impl Serialize for ValueOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self.0 {
            Value::String(v) => m.serialize_entry("string", v)?,
            Value::Int64(v) => {
                m.serialize_entry("int64", Zeroizing::new(v.to_string()).as_str())?
            }
            Value::Double(v) if v.is_finite() => m.serialize_entry("double", v)?,
            Value::Double(v) if v.is_nan() => m.serialize_entry("double", "NaN")?,
            Value::Double(v) if *v > 0.0 => m.serialize_entry("double", "Infinity")?,
            Value::Double(_) => m.serialize_entry("double", "-Infinity")?,
            Value::Bool(v) => m.serialize_entry("bool", v)?,
            Value::Bytes(v) => {
                let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(v));
                m.serialize_entry("bytes", text.as_str())?
            }
            Value::Timestamp { seconds, nanos } => m.serialize_entry(
                "timestamp",
                &serde_json::json!({ "seconds": seconds, "nanos": nanos }),
            )?,
        }
        m.end()
    }
}

/// An export authorised and on record, not yet written
/// ([`Engine::begin_export`]).
#[derive(Debug)]
pub struct ExportPlan {
    caller: Caller,
    subject: String,
    name: crate::keys::SubjectName,
    pseudonym: [u8; 32],
    /// The subject's record keys, from the subject → records index.
    keys: Vec<Vec<u8>>,
    /// The collections they are in, each with the caller's export view.
    views: BTreeMap<String, (Arc<Collection>, FieldView)>,
}

impl ExportPlan {
    /// Records the export lists (an upper bound of what it writes).
    pub fn records_total(&self) -> u64 {
        self.keys.len() as u64
    }
}

impl Engine {
    /// Exports everything of `subject` (see the module docs), handing the
    /// bundle to `sink` in chunks, in order; returns the signed statement.
    /// [`Engine::begin_export`] then [`Engine::write_export`].
    pub fn export_subject(
        &self,
        caller: &Caller,
        subject: &str,
        sink: &mut dyn FnMut(ExportChunk) -> Result<()>,
    ) -> Result<ExportSummary> {
        let plan = self.begin_export(caller, subject)?;
        self.write_export(plan, sink)
    }

    /// Authorises an export of `subject` and commits its event (the
    /// subject's pseudonym, the collections, the number of records) before
    /// anything is read. A refusal is on record too.
    pub fn begin_export(&self, caller: &Caller, subject: &str) -> Result<ExportPlan> {
        self.audited(caller, Operation::Export, "export_subject", || {
            self.plan_export(caller, subject)
        })
    }

    fn plan_export(&self, caller: &Caller, subject: &str) -> Result<ExportPlan> {
        validate_id("subject id", subject)?;
        self.check_open()?;
        let name = self.names.subject(subject);
        let pseudonym = self.keyring().subject_pseudonym(subject);
        let keys: Vec<Vec<u8>> = self
            .store
            .scan_prefix(Table::SubjectRecords, &name)?
            .into_iter()
            .map(|(k, _)| k[name.len()..].to_vec())
            .collect();
        let policy = self.policy();
        let mut views: BTreeMap<String, (Arc<Collection>, FieldView)> = BTreeMap::new();
        for key in &keys {
            let (collection, _) = split_record_key(key)?;
            if !views.contains_key(collection) {
                let c = self.data_collection(collection)?;
                let view = policy.field_view(caller, Operation::Export, &c)?;
                views.insert(collection.to_owned(), (c, view));
            }
        }
        if !caller.internal {
            self.monitor().check_budgets(policy.budgets(), caller)?;
            if self.honey_among(std::iter::once(subject)) > 0 {
                self.monitor()
                    .honey_read(caller, "(subject export)", keys.len());
            }
        }
        let mut ev = Event::of(caller, "export_subject");
        ev.collection = self.shown_collections(views.keys().map(String::as_str));
        ev.subjects.push(hex::encode(pseudonym));
        let mut fields = BTreeSet::new();
        for (c, view) in views.values() {
            fields.extend(
                c.fields
                    .iter()
                    .filter(|f| view.level(&f.name) != Redaction::Redacted)
                    .map(|f| f.name.clone()),
            );
        }
        ev.fields = fields.into_iter().collect();
        ev.detail = Some(format!(
            "{} records listed in {} collections, with the access ledger",
            keys.len(),
            views.len()
        ));
        self.commit(WriteSet::new(), ev)?;
        Ok(ExportPlan {
            caller: caller.clone(),
            subject: subject.to_owned(),
            name,
            pseudonym,
            keys,
            views,
        })
    }

    /// Writes the bundle of an export begun with [`Engine::begin_export`]
    /// to `sink`, in chunks, in order, and signs it. A failure (a sink
    /// error: the receiver went away; the vault sealed) stops it and is
    /// recorded, with the records written by then.
    pub fn write_export(
        &self,
        plan: ExportPlan,
        sink: &mut dyn FnMut(ExportChunk) -> Result<()>,
    ) -> Result<ExportSummary> {
        let mut done = 0;
        let result = self.write_bundle(&plan, sink, &mut done);
        if result.is_err() {
            let detail = format!("the export stopped after {done} records");
            let mut ev = Event::outcome(&plan.caller, "export_subject", Some(detail), &result);
            ev.subjects.push(hex::encode(plan.pseudonym));
            if let Err(e) = self.commit(WriteSet::new(), ev) {
                tracing::error!(error = %e, "audit event could not be written");
            }
        }
        result
    }

    fn write_bundle(
        &self,
        plan: &ExportPlan,
        sink: &mut dyn FnMut(ExportChunk) -> Result<()>,
        done: &mut u64,
    ) -> Result<ExportSummary> {
        let ExportPlan {
            caller,
            subject,
            name,
            pseudonym,
            keys,
            views,
        } = plan;
        let (name, pseudonym) = (*name, *pseudonym);
        let mut w = BundleWriter {
            buf: Zeroizing::new(Vec::with_capacity(2 * CHUNK_BYTES)),
            hash: Sha256::new(),
            bytes: 0,
            records_done: 0,
            records_total: keys.len() as u64,
            sink,
        };
        let exported_at_ms = self.monitor.now_ms();
        w.raw(b"{")?;
        w.member(true, "format", &EXPORT_FORMAT)?;
        w.member(false, "region", &self.region.as_str())?;
        w.member(false, "origin", &self.audit_origin)?;
        w.member(false, "subject_id", &subject)?;
        w.member(false, "subject_pseudonym", &hex::encode(pseudonym))?;
        w.member(false, "exported_at_ms", &exported_at_ms)?;
        w.member(false, "principal", &caller.principal.name)?;
        w.member(false, "purpose", &caller.purpose)?;
        w.member(false, "request_id", &caller.request_id)?;
        let schemas: Vec<&Collection> = views.values().map(|(c, _)| c.as_ref()).collect();
        w.member(false, "collections", &schemas)?;

        w.raw(b",\"records\":[")?;
        for key in keys {
            self.check_open()?;
            let (collection, record_name) = split_record_key(key)?;
            let (c, view) = &views[collection];
            let Some(bytes) = self.store.get(Table::Records, key)? else {
                continue;
            };
            let Some(opened) = self.open_readable(collection, &record_name, None, key, &bytes)?
            else {
                continue;
            };
            // A stale index entry: the record now belongs to someone else.
            if opened.stored.subject != name {
                continue;
            }
            let record =
                self.visible_record(collection, c, view, &|_| true, opened.id.clone(), &opened)?;
            // Over a read budget: the export stops here (and says so in
            // the log). The ids count as bytes, as for a read.
            let bytes: usize = record.fields.values().map(Value::size).sum::<usize>()
                + record.id.len()
                + record.subject_id.len();
            if !caller.internal {
                self.monitor()
                    .charge(self.policy().budgets(), caller, 1, bytes as u64)?;
            }
            // JSON escapes at most six bytes for one, base64 four for three.
            w.reserve(6 * bytes + 4096)?;
            if w.records_done > 0 {
                w.raw(b",")?;
            }
            w.json(&RecordOut {
                record: &record,
                written_ms: opened.stored.written_ms,
                expired: self.expired(c, &opened.stored),
            })?;
            w.records_done += 1;
            *done = w.records_done;
        }
        w.raw(b"]")?;

        // The ledger, proved in a checkpoint signed now (after the export's
        // own event).
        let checkpoint = self.checkpoint()?;
        let (size, _) =
            crate::audit::checkpoint::parse(checkpoint.as_bytes()).ok_or(Error::Integrity)?;
        w.raw(b",\"access_ledger\":{")?;
        w.member(true, "checkpoint", &checkpoint)?;
        w.member(false, "verifier_key", &self.audit_verifier_key())?;
        w.raw(b",\"events\":[")?;
        let mut ledger_events = 0u64;
        let mut from = 0;
        loop {
            self.check_open()?;
            let page = self
                .audit()
                .subject_events(&pseudonym, from, size, LEDGER_PAGE)?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            let indices: Vec<u64> = page.iter().map(|(index, _)| *index).collect();
            let proofs = self.audit().inclusion_proofs(&indices, size)?;
            for ((index, event), proof) in page.iter().zip(proofs) {
                let event = std::str::from_utf8(event).map_err(|_| Error::Integrity)?;
                let proof: Vec<String> = proof.iter().map(hex::encode).collect();
                if ledger_events > 0 {
                    w.raw(b",")?;
                }
                w.json(&serde_json::json!({
                    "index": index,
                    "event": event,
                    "proof": proof,
                }))?;
                ledger_events += 1;
            }
            from = last + 1;
        }
        w.raw(b"]}")?;
        let records = w.records_done;
        w.raw(b",\"counts\":")?;
        w.json(&serde_json::json!({
            "records": records,
            "ledger_events": ledger_events,
        }))?;
        w.raw(b"}\n")?;
        w.flush()?;

        let sha256: [u8; 32] = w.hash.finalize().into();
        let statement = export_statement(
            &self.audit_origin,
            &pseudonym,
            w.records_done,
            ledger_events,
            w.bytes,
            &sha256,
        );
        Ok(ExportSummary {
            signature: crate::audit::checkpoint::sign_note(
                &self.audit_origin,
                &statement,
                &self.audit_signer,
            ),
            records: w.records_done,
            ledger_events,
            bytes: w.bytes,
            sha256,
        })
    }
}
