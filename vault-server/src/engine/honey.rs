//! Honey records: decoys planted in a collection that no real workflow
//! reads. Their subjects are kept in the `Meta` table by storage name
//! (`honey/` ‖ subject name, like every other key: no id, and nothing that
//! joins the audit log's pseudonyms); a read or batch get that returns one
//! of their records raises a critical alert (the decoy data is served: it
//! is worthless).

use std::collections::{BTreeMap, HashSet};

use rand::Rng as _;

use super::{Engine, FieldType, Record, Value};
use crate::audit::Event;
use crate::policy::{Caller, Operation};
use crate::storage::{Store, Table, WriteSet};
use crate::{Error, Result};

/// The `Meta` key prefix of honey subjects.
const HONEY_PREFIX: &[u8] = b"honey/";
/// Most decoys planted by one call.
pub const MAX_HONEY_RECORDS: usize = 100;

/// The honey subjects' storage names stored in `store`.
pub(super) fn load(store: &dyn Store) -> Result<HashSet<[u8; 32]>> {
    let mut set = HashSet::new();
    for (key, _) in store.scan_prefix(Table::Meta, HONEY_PREFIX)? {
        let name: [u8; 32] = key
            .get(HONEY_PREFIX.len()..)
            .and_then(|p| p.try_into().ok())
            .ok_or(Error::Integrity)?;
        set.insert(name);
    }
    Ok(set)
}

/// A random lower-case word of `len` letters.
fn word(rng: &mut impl rand::Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
        .collect()
}

/// A plausible value of `field_type` for a field named `name`.
fn decoy_value(rng: &mut impl rand::Rng, name: &str, field_type: FieldType) -> Value {
    match field_type {
        FieldType::String if name.contains("mail") => Value::String(format!(
            "{}.{}@{}.com",
            word(rng, 5),
            word(rng, 7),
            word(rng, 6)
        )),
        FieldType::String if name.contains("phone") => Value::String(format!(
            "+33{}",
            (0..9)
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect::<String>()
        )),
        FieldType::String => {
            let mut w = word(rng, 6);
            w[..1].make_ascii_uppercase();
            Value::String(w)
        }
        FieldType::Int64 => Value::Int64(rng.gen_range(1..1_000_000)),
        FieldType::Double => Value::Double(f64::from(rng.gen_range(0..100_000u32)) / 100.0),
        FieldType::Bool => Value::Bool(rng.gen()),
        FieldType::Bytes => Value::Bytes((0..16).map(|_| rng.gen()).collect()),
        FieldType::Timestamp => Value::Timestamp {
            seconds: rng.gen_range(0..1_700_000_000),
            nanos: 0,
        },
    }
}

impl Engine {
    /// Plants `count` (1 to 100) decoy records, each of a subject of its
    /// own, in `collection`, with plausible values in every field; returns
    /// their ids. Needs the `admin` operation on the collection. The
    /// decoys are written like any record (and audited as writes of the
    /// internal principal `honey`); their subjects are remembered as honey.
    pub fn create_honey(
        &self,
        caller: &Caller,
        collection: &str,
        count: usize,
    ) -> Result<Vec<String>> {
        let result = self.create_honey_unaudited(caller, collection, count);
        let mut ev = Event::outcome(
            caller,
            "honey_create",
            result
                .as_ref()
                .ok()
                .map(|ids| format!("{} decoy records", ids.len())),
            &result,
        );
        ev.collection = Some(collection.to_owned());
        self.append_event(ev)?;
        result
    }

    fn create_honey_unaudited(
        &self,
        caller: &Caller,
        collection: &str,
        count: usize,
    ) -> Result<Vec<String>> {
        self.check_open()?;
        self.policy()
            .authorize(caller, Operation::Admin, Some(collection))?;
        if count == 0 || count > MAX_HONEY_RECORDS {
            return Err(Error::InvalidArgument(format!(
                "plant 1 to {MAX_HONEY_RECORDS} decoy records at a time, not {count}"
            )));
        }
        let c = self.data_collection(collection)?;
        let mut rng = rand::thread_rng();
        let mut records = Vec::with_capacity(count);
        let mut ws = WriteSet::new();
        let mut planted = Vec::with_capacity(count);
        for _ in 0..count {
            let id = hex::encode(rng.gen::<[u8; 8]>());
            let subject = hex::encode(rng.gen::<[u8; 8]>());
            let fields: BTreeMap<String, Value> = c
                .fields
                .iter()
                .map(|f| (f.name.clone(), decoy_value(&mut rng, &f.name, f.field_type)))
                .collect();
            records.push(Record::new(
                collection,
                id.as_str(),
                subject.as_str(),
                fields,
            ));
            let name = self.names.subject(&subject);
            let mut key = HONEY_PREFIX.to_vec();
            key.extend_from_slice(&name);
            ws.put(Table::Meta, key, Vec::new());
            planted.push((id, name));
        }
        // Remembered as honey before the decoys exist: no window in which
        // one can be read unnoticed.
        self.store.write(ws)?;
        self.honey
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(planted.iter().map(|(_, p)| *p));
        self.put_records(&Caller::internal("honey"), records)?;
        Ok(planted.into_iter().map(|(id, _)| id).collect())
    }

    /// How many of `subjects` are honey (no work while there is none).
    pub(super) fn honey_among<'a>(&self, subjects: impl Iterator<Item = &'a str>) -> usize {
        let honey = self.honey.read().unwrap_or_else(|p| p.into_inner());
        if honey.is_empty() {
            return 0;
        }
        subjects
            .filter(|s| honey.contains(&self.names.subject(s)))
            .count()
    }
}
