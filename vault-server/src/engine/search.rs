//! `find`: the records of a collection whose indexed field equals a value
//! (after normalisation, see `index.rs`), through the blind index.
//!
//! The caller needs the `search` operation on the collection for its
//! purpose, and the searched field must be one its search rules show in
//! full (plain): equality answers about a masked or redacted field would
//! give away what it may not read. The records come back as a read returns them: the fields its
//! search rules show, at their redaction level. Every hit is checked
//! against the record's value (an index entry left by two writes of one
//! record at once finds nothing), under every live index key version
//! (while the index is rebuilt after an index-key rotation, a record's rows
//! are of the older or the newer version: `reindex.rs`), with each hit
//! re-checked under the version its row was made with and found once; an
//! erased subject's records are not
//! found, and the search is audited like a read (operation `search`, the
//! searched field named in the event's detail, the pseudonyms of the
//! records and subjects found), counted by read budgets and the metrics.

use std::collections::HashSet;

use super::index;
use super::{Engine, Event, Record, Staged, Value};
use crate::policy::{Caller, Operation, Redaction};
use crate::storage::{split_record_key, Table};
use crate::{Error, Result};

/// The most records one search returns.
pub const MAX_FIND_RESULTS: usize = 500;

impl Engine {
    /// The records of `collection` whose `field` equals `value` (at most
    /// `limit`, 1 to [`MAX_FIND_RESULTS`]), with the `fields` asked for
    /// (all if empty) as the caller's search rules show them.
    pub fn find_records(
        &self,
        caller: &Caller,
        collection: &str,
        field: &str,
        value: &Value,
        fields: &[String],
        limit: usize,
    ) -> Result<Vec<Record>> {
        self.settle(self.stage_find(caller, collection, field, value, fields, limit))
            .map(|(found, ())| found)
    }

    /// [`Engine::find_records`] for the async request path.
    pub async fn find_records_async(
        &self,
        caller: &Caller,
        collection: &str,
        field: &str,
        value: &Value,
        fields: &[String],
        limit: usize,
    ) -> Result<Vec<Record>> {
        self.settle_async(self.stage_find(caller, collection, field, value, fields, limit))
            .await
            .map(|(found, ())| found)
    }

    fn stage_find(
        &self,
        caller: &Caller,
        collection: &str,
        field: &str,
        value: &Value,
        fields: &[String],
        limit: usize,
    ) -> Staged<(Vec<Record>, ())> {
        let mut ev: Event = self.event(caller, Operation::Search, Some(collection));
        // The field searched, if the collection has it: like collections,
        // a name the caller mistyped is not kept.
        let known = self
            .data_collection(collection)
            .is_ok_and(|c| c.field(field).is_some());
        if known {
            ev.detail = Some(serde_json::json!({ "field": field }).to_string());
        }
        if !caller.internal {
            let policy = self.policy();
            if let Err(e) = self.monitor().check_budgets(policy.budgets(), caller) {
                return Staged::failed(ev, e);
            }
        }
        match self.find_unaudited(caller, collection, field, value, fields, limit) {
            Ok(found) => {
                // The records found, as a read names the ids it was asked.
                let kr = self.keyring();
                for r in &found {
                    ev.records
                        .push(super::to_hex(kr.record_pseudonym(collection, &r.id)));
                }
                self.finish_read(caller, collection, ev, found, ())
            }
            Err(e) => Staged::failed(ev, e),
        }
    }

    fn find_unaudited(
        &self,
        caller: &Caller,
        collection: &str,
        field: &str,
        value: &Value,
        fields: &[String],
        limit: usize,
    ) -> Result<Vec<Record>> {
        self.check_open()?;
        let policy = self.policy();
        policy.authorize(caller, Operation::Search, Some(collection))?;
        let c = self.data_collection(collection)?;
        let view = policy.field_view(caller, Operation::Search, &c)?;
        let schema = c.field(field).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown field {} in collection {}",
                super::shown(field),
                c.name
            ))
        })?;
        if !schema.indexed {
            return Err(Error::InvalidArgument(format!(
                "field {field} of collection {collection} is not indexed: only indexed fields \
                 can be searched"
            )));
        }
        // Only a field the search rules show in full: an equality answer
        // about a masked or redacted field would give away what the mask
        // hides.
        if view.level(field) != Redaction::Plain {
            return Err(Error::PermissionDenied(format!(
                "principal {} may not search by field {field} of collection {collection}: its \
                 search rules do not show it in full",
                caller.principal.name
            )));
        }
        if value.field_type() != schema.field_type {
            return Err(Error::InvalidArgument(format!(
                "field {field} of collection {collection} is {}, the value is {}",
                schema.field_type,
                value.field_type()
            )));
        }
        value.validate(field)?;
        if !(1..=MAX_FIND_RESULTS).contains(&limit) {
            return Err(Error::InvalidArgument(format!(
                "a search returns 1 to {MAX_FIND_RESULTS} records"
            )));
        }
        for f in fields {
            if c.field(f).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "unknown field {} in collection {}",
                    super::shown(f),
                    c.name
                )));
            }
        }
        let projected = |name: &str| fields.is_empty() || fields.iter().any(|f| f == name);
        let kr = self.keyring();
        let live = kr.live_index_keys();
        if live.is_empty() {
            return Err(Error::Integrity);
        }
        let mut found = Vec::new();
        let mut found_keys: HashSet<Vec<u8>> = HashSet::new();
        // Under every live index key version (two while the index is
        // rebuilt after a rotation), the oldest first: the rebuild moves a
        // record's rows from an older version to the current one only, so
        // a record it moves while this search runs is met under the version
        // scanned later.
        'versions: for (version, key) in live {
            let token = index::token(key, version, self.region.as_str(), collection, field, value)
                .ok_or(Error::Integrity)?;
            let prefix = index::forward_prefix(&token);
            let mut from = prefix.clone();
            // Pages of hits until `limit` records are found; a stale entry
            // (checked below) costs a look and nothing more.
            loop {
                let page = self.store.scan_from(Table::Index, &from, limit + 1)?;
                let keys: Vec<Vec<u8>> = page
                    .iter()
                    .map_while(|(k, _)| k.strip_prefix(prefix.as_slice()).map(<[u8]>::to_vec))
                    .collect();
                let done = keys.len() < page.len() || page.len() <= limit;
                let values = self.read_rows(Table::Records, &keys)?;
                for (record_key, bytes) in keys.iter().zip(values) {
                    // Found already, under the other version.
                    if found_keys.contains(record_key) {
                        continue;
                    }
                    let Some(bytes) = bytes else { continue };
                    let (in_collection, name) = split_record_key(record_key)?;
                    if in_collection != collection {
                        return Err(Error::Integrity);
                    }
                    let Some(opened) =
                        self.open_readable(collection, &name, None, record_key, &bytes)?
                    else {
                        continue;
                    };
                    if self.expired(&c, &opened.stored) {
                        continue;
                    }
                    // The record's own value must still have the token, under
                    // the version the row was made with.
                    let Some(sf) = opened.stored.fields.iter().find(|f| f.name == field) else {
                        continue;
                    };
                    let current =
                        Value::from_plaintext(self.open_stored_field(&opened, collection, sf)?)?;
                    if index::token(
                        key,
                        version,
                        self.region.as_str(),
                        collection,
                        field,
                        &current,
                    ) != Some(token)
                    {
                        continue;
                    }
                    let id = opened.id.clone();
                    found
                        .push(self.visible_record(collection, &c, &view, &projected, id, &opened)?);
                    found_keys.insert(record_key.clone());
                    if found.len() == limit {
                        break 'versions;
                    }
                }
                match keys.last() {
                    Some(last) if !done => {
                        from = [prefix.as_slice(), last.as_slice(), &[0]].concat();
                    }
                    _ => break,
                }
            }
        }
        // A rotation since the keyring was read: a record the new rebuild
        // moved meanwhile may have been missed. Rare (only as custodians
        // rotate), and the caller can simply ask again.
        if self.keyring().current_index_version() != kr.current_index_version() {
            return Err(Error::Unavailable(
                "the index key was rotated during this search; search again".into(),
            ));
        }
        Ok(found)
    }
}
