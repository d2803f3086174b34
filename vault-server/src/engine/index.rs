//! Blind indexes: equality search over encrypted fields.
//!
//! A field the schema marks `indexed` gets, for each record, a token:
//!
//! ```text
//! token = HMAC-SHA256(K, normalised value)
//! K     = HKDF-SHA256(ikm = index key IK_v,
//!                     salt = "vault/v1/blind-index" ‖ lp(region),
//!                     info = lp(collection) ‖ lp(field) ‖ v)
//! ```
//!
//! so a token is bound to its region, collection, field and index-key
//! version, and equal values (after normalisation) have equal tokens.
//! Normalisation, by type: a string is trimmed of white space at both ends
//! and lower-cased (Unicode, so `Ada@Example.EU ` and `ada@example.eu`
//! match; no other Unicode normalisation); an int64 is its 8 big-endian
//! bytes; a timestamp its seconds and nanoseconds, big-endian; bytes are
//! taken as they are. Booleans and doubles cannot be indexed (the schema
//! refuses them).
//!
//! Rows, in `Table::Index`:
//!
//! ```text
//! 'f' ‖ token (32) ‖ record key      → empty          (search: prefix 'f' ‖ token)
//! 'r' ‖ record key ‖ token (32)      → v (u32 BE)     (a record's tokens: prefix 'r' ‖ record key)
//! ```
//!
//! A record key is its collection, a NUL and a 32-byte storage name, so
//! the prefix `'r' ‖ record key` holds one record's rows only. A write
//! reads the record's reverse rows (a short prefix scan) and, in its own
//! batch, removes the entries of tokens it no longer has and adds the new
//! ones. Two writes of one record at once (they take no common lock) may
//! each add their token: both are then listed in reverse rows, so the next
//! write, delete or erasure of the record removes both; a search re-checks
//! every hit against the record's value. A replace, a delete or an erasure
//! thus removes every entry the record had, in the same batch
//! as the record itself. What an index gives away to whoever reads the
//! data folder: which records share a value of a field (equality), and so
//! how often each value occurs (frequency); never the value (SECURITY.md).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::schema::Collection;
use super::value::Value;
use crate::crypto::{derive_blind_index_key, Key256};
use crate::storage::{Table, WriteSet};
use crate::{Error, Result};

/// A blind-index token.
pub type Token = [u8; 32];

const FORWARD: u8 = b'f';
const REVERSE: u8 = b'r';

/// The bytes a value is indexed as, or `None` for a type that is not
/// indexed.
pub fn normalised(value: &Value) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let bytes = match value {
        Value::String(s) => s.trim().to_lowercase().into_bytes(),
        Value::Int64(i) => i.to_be_bytes().to_vec(),
        Value::Timestamp { seconds, nanos } => {
            let mut b = seconds.to_be_bytes().to_vec();
            b.extend_from_slice(&nanos.to_be_bytes());
            b
        }
        Value::Bytes(b) => b.clone(),
        Value::Bool(_) | Value::Double(_) => return None,
    };
    Some(zeroize::Zeroizing::new(bytes))
}

/// The token of `value` in the index of `field` of `collection`, under
/// index key `key` of version `version`.
pub fn token(
    key: &Key256,
    version: u32,
    region: &str,
    collection: &str,
    field: &str,
    value: &Value,
) -> Option<Token> {
    let bytes = normalised(value)?;
    let k = derive_blind_index_key(key, region, collection, field, version);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(k.expose_secret())
        .expect("HMAC takes a key of any length");
    mac.update(&bytes);
    Some(mac.finalize().into_bytes().into())
}

/// The tokens of a record's indexed fields (those it has).
pub fn tokens<'a>(
    key: &Key256,
    version: u32,
    region: &str,
    collection: &Collection,
    fields: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Vec<Token> {
    fields
        .into_iter()
        .filter(|(name, _)| collection.field(name).is_some_and(|f| f.indexed))
        .filter_map(|(name, value)| token(key, version, region, &collection.name, name, value))
        .collect()
}

/// The search prefix of `token`: every forward row of records with it.
pub fn forward_prefix(token: &Token) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(FORWARD);
    k.extend_from_slice(token);
    k
}

fn forward_key(token: &Token, record_key: &[u8]) -> Vec<u8> {
    let mut k = forward_prefix(token);
    k.extend_from_slice(record_key);
    k
}

/// The prefix of a record's reverse rows.
pub fn reverse_prefix(record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(33 + record_key.len());
    k.push(REVERSE);
    k.extend_from_slice(record_key);
    k
}

fn reverse_key(record_key: &[u8], token: &Token) -> Vec<u8> {
    let mut k = reverse_prefix(record_key);
    k.extend_from_slice(token);
    k
}

/// The tokens a record's reverse rows (found under `prefix`) list.
pub fn listed_tokens(rows: &[(Vec<u8>, Vec<u8>)], prefix: &[u8]) -> Result<Vec<Token>> {
    rows.iter()
        .map(|(k, _)| {
            k.strip_prefix(prefix)
                .and_then(|t| Token::try_from(t).ok())
                .ok_or(Error::Integrity)
        })
        .collect()
}

/// The tokens a record's reverse rows (found under `prefix`) list, each
/// with the index-key version its row was made under (`None` for a value
/// that is not one: a row not written by us, of no live version).
pub fn listed_versions(
    rows: &[(Vec<u8>, Vec<u8>)],
    prefix: &[u8],
) -> Result<Vec<(Token, Option<u32>)>> {
    let tokens = listed_tokens(rows, prefix)?;
    Ok(tokens
        .into_iter()
        .zip(rows)
        .map(|(t, (_, v))| {
            let version = <[u8; 4]>::try_from(v.as_slice())
                .ok()
                .map(u32::from_be_bytes);
            (t, version)
        })
        .collect())
}

/// Whether `key` is a reverse row's key.
pub fn is_reverse(key: &[u8]) -> bool {
    key.first() == Some(&REVERSE)
}

/// The first key of the reverse rows (where the rebuild starts).
pub fn reverse_start() -> Vec<u8> {
    vec![REVERSE]
}

/// The record key a reverse row names (`'r' ‖ record key ‖ token`), or
/// `None` if the row is not one (too short, or no record key in it).
pub fn reverse_record_key(row: &[u8]) -> Option<&[u8]> {
    let rest = row.strip_prefix(&[REVERSE])?;
    let record_key = rest.get(..rest.len().checked_sub(32)?)?;
    crate::storage::split_record_key(record_key).ok()?;
    Some(record_key)
}

/// The first key after every reverse row of `record_key`: its rows are
/// `'r' ‖ record key ‖ 32 bytes`, and no record key is a prefix of another
/// (a collection name holds no NUL, a storage name is 32 bytes).
pub fn after_record(record_key: &[u8]) -> Vec<u8> {
    let mut k = reverse_prefix(record_key);
    k.extend_from_slice(&[0xFF; 32]);
    k.push(0);
    k
}

/// The keys of the rows (forward and reverse) of the record at
/// `record_key` listed under `tokens`.
pub fn row_keys(record_key: &[u8], tokens: &[Token]) -> Vec<Vec<u8>> {
    tokens
        .iter()
        .flat_map(|t| [forward_key(t, record_key), reverse_key(record_key, t)])
        .collect()
}

/// Into `ws`: the index rows of `record_key` go from the tokens `old` it
/// is listed under to `new` (made under index-key version `version`).
pub fn replace(ws: &mut WriteSet, record_key: &[u8], old: &[Token], version: u32, new: &[Token]) {
    for t in old.iter().filter(|t| !new.contains(t)) {
        ws.delete(Table::Index, forward_key(t, record_key));
        ws.delete(Table::Index, reverse_key(record_key, t));
    }
    for t in new {
        ws.put(Table::Index, forward_key(t, record_key), Vec::new());
        ws.put(
            Table::Index,
            reverse_key(record_key, t),
            version.to_be_bytes().to_vec(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key256 {
        Key256::from_slice(&[7; 32]).unwrap()
    }

    #[test]
    fn normalisation_makes_case_and_spaces_equal_and_nothing_else() {
        let t = |v: Value| token(&key(), 1, "eu", "users", "email", &v).unwrap();
        let ada = t(Value::String("ada@example.eu".into()));
        assert_eq!(t(Value::String("  Ada@Example.EU \n".into())), ada);
        assert_ne!(t(Value::String("ada@example.eu.".into())), ada);
        assert_ne!(t(Value::String("ada @example.eu".into())), ada);
        // Bound to the field, collection, region and key version.
        let v = Value::String("ada@example.eu".into());
        assert_ne!(token(&key(), 1, "eu", "users", "name", &v).unwrap(), ada);
        assert_ne!(token(&key(), 1, "eu", "people", "email", &v).unwrap(), ada);
        assert_ne!(token(&key(), 1, "fr", "users", "email", &v).unwrap(), ada);
        assert_ne!(token(&key(), 2, "eu", "users", "email", &v).unwrap(), ada);
        // Types apart: the number 7 and the bytes of 7 differ from "7".
        assert_ne!(t(Value::Int64(7)), t(Value::String("7".into())));
        assert_eq!(
            t(Value::Timestamp {
                seconds: 5,
                nanos: 1
            }),
            t(Value::Timestamp {
                seconds: 5,
                nanos: 1
            })
        );
        assert!(token(&key(), 1, "eu", "users", "b", &Value::Bool(true)).is_none());
        assert!(token(&key(), 1, "eu", "users", "d", &Value::Double(1.0)).is_none());
    }

    #[test]
    fn rows_follow_a_record_and_reverse_rows_are_checked() {
        use crate::storage::Op;
        let rk = b"users\0name".to_vec();
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        // (put?, key) of each op, in order.
        let ops = |ws: &WriteSet| -> Vec<(bool, Vec<u8>)> {
            ws.ops()
                .iter()
                .map(|op| match op {
                    Op::Put(Table::Index, k, _) => (true, k.clone()),
                    Op::Delete(Table::Index, k) => (false, k.clone()),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let mut ws = WriteSet::new();
        replace(&mut ws, &rk, &[], 1, &[a]);
        assert_eq!(
            ops(&ws),
            vec![(true, forward_key(&a, &rk)), (true, reverse_key(&rk, &a))]
        );
        // a goes, b comes; then everything goes.
        let mut ws = WriteSet::new();
        replace(&mut ws, &rk, &[a, c], 1, &[c, b]);
        assert_eq!(
            ops(&ws),
            vec![
                (false, forward_key(&a, &rk)),
                (false, reverse_key(&rk, &a)),
                (true, forward_key(&c, &rk)),
                (true, reverse_key(&rk, &c)),
                (true, forward_key(&b, &rk)),
                (true, reverse_key(&rk, &b)),
            ]
        );
        let prefix = reverse_prefix(&rk);
        let rows = vec![(reverse_key(&rk, &a), vec![0, 0, 0, 1])];
        assert_eq!(listed_tokens(&rows, &prefix).unwrap(), vec![a]);
        let bad = vec![
            (prefix.clone(), vec![]),
            ([&prefix[..], &[1u8; 31]].concat(), vec![]),
        ];
        for row in bad {
            assert!(listed_tokens(&[row], &prefix).is_err());
        }
        assert!(forward_key(&a, &rk).starts_with(&forward_prefix(&a)));
        // Versions as the rows say them; a value that is not a u32 is none.
        let rows = vec![
            (reverse_key(&rk, &a), vec![0, 0, 0, 1]),
            (reverse_key(&rk, &b), vec![0, 0, 0, 2]),
            (reverse_key(&rk, &c), vec![2]),
        ];
        assert_eq!(
            listed_versions(&rows, &prefix).unwrap(),
            vec![(a, Some(1)), (b, Some(2)), (c, None)]
        );
    }

    /// The rebuild's walk: a reverse row names its record; the key after a
    /// record's rows is past every one of them and before the next
    /// record's, whatever their tokens.
    #[test]
    fn reverse_rows_name_their_record_and_the_walk_passes_each_once() {
        let rk = crate::storage::record_key("people", &[7; 32]);
        let next = crate::storage::record_key("people", &[8; 32]);
        let longer = crate::storage::record_key("peoplex", &[0; 32]);
        for t in [[0u8; 32], [0xFF; 32], [0x80; 32]] {
            let row = reverse_key(&rk, &t);
            assert!(is_reverse(&row));
            assert_eq!(reverse_record_key(&row), Some(rk.as_slice()));
            assert!(row < after_record(&rk));
            assert!(after_record(&rk) < reverse_key(&next, &[0; 32]));
            assert!(after_record(&rk) < reverse_key(&longer, &[0; 32]));
            assert!(!is_reverse(&forward_key(&t, &rk)));
        }
        assert!(reverse_start() <= reverse_key(&rk, &[0; 32]));
        for bad in [
            vec![REVERSE],
            [&[REVERSE][..], &[1u8; 32][..]].concat(),
            [&[REVERSE][..], &b"people"[..], &[1u8; 40][..]].concat(),
            forward_key(&[1; 32], &rk),
        ] {
            assert_eq!(reverse_record_key(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn two_writes_of_one_record_at_once_leave_nothing_behind_the_next() {
        use std::collections::BTreeMap;
        let rk = b"users\0name".to_vec();
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let apply = |rows: &mut BTreeMap<Vec<u8>, Vec<u8>>, ws: WriteSet| {
            for op in ws.ops() {
                match op {
                    crate::storage::Op::Put(_, k, v) => {
                        rows.insert(k.clone(), v.clone());
                    }
                    crate::storage::Op::Delete(_, k) => {
                        rows.remove(k);
                    }
                }
            }
        };
        let listed = |rows: &BTreeMap<Vec<u8>, Vec<u8>>| {
            let prefix = reverse_prefix(&rk);
            let found: Vec<_> = rows
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            listed_tokens(&found, &prefix).unwrap()
        };
        let (t0, tx, ty) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let mut ws = WriteSet::new();
        replace(&mut ws, &rk, &[], 1, &[t0]);
        apply(&mut rows, ws);
        // Two writers read the same rows, then both commit.
        let old = listed(&rows);
        let (mut a, mut b) = (WriteSet::new(), WriteSet::new());
        replace(&mut a, &rk, &old, 1, &[tx]);
        replace(&mut b, &rk, &old, 1, &[ty]);
        apply(&mut rows, a);
        apply(&mut rows, b);
        assert_eq!(listed(&rows), vec![tx, ty]);
        // The next delete (or erasure) removes every row of the record.
        let mut ws = WriteSet::new();
        replace(&mut ws, &rk, &listed(&rows), 0, &[]);
        apply(&mut rows, ws);
        assert!(rows.is_empty(), "{rows:?}");
    }
}
