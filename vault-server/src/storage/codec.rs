//! Keys and the stored record codec, format 2. No key and no value holds a
//! record id or a subject id in clear: rows are named by keyed storage
//! names (`keys::StorageNames`), and the clear ids live only inside each
//! record, encrypted.
//!
//! Record key: `collection ‖ 0x00 ‖ record name (32)` (names never hold 0x00).
//! Subject key row: `u16 bucket ‖ subject name (32) ‖ u32 key version`,
//! so one shred bucket's rows are one range.
//! Subject → records index entry: `subject name (32) ‖ record key`.
//!
//! Stored record, version 3 (integers big-endian):
//!
//! ```text
//!  ┌ body ───────────────────────────────────────────────────────────────┐
//!  │ u8  version = 3                                                     │
//!  │ 32  subject storage name                                            │
//!  │ u32 subject key version (of every envelope and of the record tag)   │
//!  │ u64 written at, ms since the Unix epoch (the vault's clock)         │
//!  │ u32 ids envelope length ‖ ids envelope                              │
//!  │ u16 field count                                                     │
//!  │ per field, in name order:                                           │
//!  │     u16 name length ‖ name (UTF-8) ‖ u32 envelope length ‖ envelope │
//!  └─────────────────────────────────────────────────────────────────────┘
//!  32 bytes record tag = HMAC-SHA256 over the body (see `crypto::record_tag`)
//! ```
//!
//! The ids envelope is a field envelope (same key derivation and AAD, with
//! the reserved field name `$ids` and the record's storage name in hex in
//! place of its id) whose plaintext is `u16 len ‖ subject id ‖ u16 len ‖
//! record id` ([`encode_ids`]). Field values exist here only as envelopes.
//! The envelopes authenticate each value; the record tag authenticates the
//! record as a whole (its subject, its ids, its set of fields), so a dropped
//! field or a swapped subject is caught too. Anything that does not parse
//! exactly, with no trailing bytes, is an integrity failure. Version 2 is
//! version 3 without the time it was written (records written before
//! retention; read as written at an unknown time, which never expires).
//! Version 1 (subject id in clear) is refused. The time is under the record
//! tag: only a holder of the subject key can move it.

use crate::keys::{RecordName, SubjectName};
use crate::{Error, Result};

/// The stored record format of records without a write time (read only).
pub const STORED_RECORD_V2: u8 = 2;
/// The stored record format this build writes.
pub const STORED_RECORD_V3: u8 = 3;

/// The key of a record in [`super::Table::Records`].
pub fn record_key(collection: &str, name: &RecordName) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 1 + name.len());
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(name);
    k
}

/// A record key back into its collection and record name.
pub fn split_record_key(key: &[u8]) -> Result<(&str, RecordName)> {
    let nul = key.iter().position(|&b| b == 0).ok_or(Error::Integrity)?;
    let collection = std::str::from_utf8(&key[..nul]).map_err(|_| Error::Integrity)?;
    let name = key[nul + 1..].try_into().map_err(|_| Error::Integrity)?;
    Ok((collection, name))
}

/// `u16 bucket`: the prefix of one shred bucket's subject key rows.
pub fn bucket_prefix(bucket: u16) -> [u8; 2] {
    bucket.to_be_bytes()
}

/// `u16 bucket ‖ subject name`: the prefix of a subject's key rows.
pub fn subject_key_prefix(bucket: u16, subject: &SubjectName) -> Vec<u8> {
    let mut p = Vec::with_capacity(38);
    p.extend_from_slice(&bucket.to_be_bytes());
    p.extend_from_slice(subject);
    p
}

/// `u16 bucket ‖ subject name ‖ u32 version`: a wrapped subject key's row.
pub fn subject_key_id(bucket: u16, subject: &SubjectName, version: u32) -> Vec<u8> {
    let mut k = subject_key_prefix(bucket, subject);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Splits a subject key row's key into bucket, subject name and version.
pub fn parse_subject_key_id(key: &[u8]) -> Result<(u16, SubjectName, u32)> {
    let key: &[u8; 38] = key.try_into().map_err(|_| Error::Integrity)?;
    let bucket = u16::from_be_bytes([key[0], key[1]]);
    let mut subject = [0u8; 32];
    subject.copy_from_slice(&key[2..34]);
    let version = u32::from_be_bytes([key[34], key[35], key[36], key[37]]);
    Ok((bucket, subject, version))
}

/// `subject name ‖ record key`: one entry of the subject → records index.
pub fn subject_record_key(subject: &SubjectName, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + record_key.len());
    k.extend_from_slice(subject);
    k.extend_from_slice(record_key);
    k
}

/// The plaintext of a record's ids envelope.
pub fn encode_ids(subject_id: &str, record_id: &str) -> zeroize::Zeroizing<Vec<u8>> {
    let mut out =
        zeroize::Zeroizing::new(Vec::with_capacity(4 + subject_id.len() + record_id.len()));
    put_u16_str(&mut out, subject_id);
    put_u16_str(&mut out, record_id);
    out
}

/// Decodes the plaintext of an ids envelope: (subject id, record id).
pub fn decode_ids(plain: &[u8]) -> Result<(String, String)> {
    let mut r = Reader(plain);
    let subject = r.u16_str()?;
    let record = r.u16_str()?;
    if !r.0.is_empty() {
        return Err(Error::Integrity);
    }
    Ok((subject, record))
}

/// One encrypted field as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredField {
    /// The field name.
    pub name: String,
    /// Its envelope.
    pub envelope: Vec<u8>,
}

/// Length of the record tag.
pub const RECORD_TAG_LEN: usize = 32;

/// A record as stored: the subject's storage name, the key version, the
/// encrypted ids and fields, and the record tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The storage name of the data subject the record is about.
    pub subject: SubjectName,
    /// The subject key version of every envelope and of the tag.
    pub key_version: u32,
    /// When it was written (ms since the Unix epoch); `None` for a record
    /// of format 2, written before retention existed.
    pub written_ms: Option<u64>,
    /// The envelope of the subject and record ids.
    pub ids: Vec<u8>,
    /// The fields, sorted by name.
    pub fields: Vec<StoredField>,
    /// HMAC-SHA256 over the encoded body.
    pub tag: [u8; RECORD_TAG_LEN],
}

impl StoredRecord {
    /// Encodes the body: everything but the tag. Names and ids are bounded
    /// by request validation far below u16::MAX, envelopes far below u32::MAX.
    pub fn encode_body(&self) -> Vec<u8> {
        let size: usize = 51
            + RECORD_TAG_LEN
            + self.ids.len()
            + self
                .fields
                .iter()
                .map(|f| 6 + f.name.len() + f.envelope.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.push(match self.written_ms {
            Some(_) => STORED_RECORD_V3,
            None => STORED_RECORD_V2,
        });
        out.extend_from_slice(&self.subject);
        out.extend_from_slice(&self.key_version.to_be_bytes());
        if let Some(ms) = self.written_ms {
            out.extend_from_slice(&ms.to_be_bytes());
        }
        out.extend_from_slice(&(self.ids.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.ids);
        out.extend_from_slice(&(self.fields.len() as u16).to_be_bytes());
        for f in &self.fields {
            put_u16_str(&mut out, &f.name);
            out.extend_from_slice(&(f.envelope.len() as u32).to_be_bytes());
            out.extend_from_slice(&f.envelope);
        }
        out
    }

    /// Encodes the whole record: body, then tag.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_body();
        out.extend_from_slice(&self.tag);
        out
    }

    /// Decodes a stored record, refusing anything malformed. Returns the
    /// record and the body bytes its tag covers. (The tag is not checked
    /// here: that needs the subject key.)
    pub fn decode(bytes: &[u8]) -> Result<(Self, &[u8])> {
        let split = bytes
            .len()
            .checked_sub(RECORD_TAG_LEN)
            .ok_or(Error::Integrity)?;
        let (body, tag) = bytes.split_at(split);
        let mut r = Reader(body);
        let version = r.u8()?;
        if version != STORED_RECORD_V2 && version != STORED_RECORD_V3 {
            return Err(Error::Integrity);
        }
        let subject: SubjectName = r.take(32)?.try_into().map_err(|_| Error::Integrity)?;
        let key_version = r.u32()?;
        let written_ms = match version {
            STORED_RECORD_V3 => Some(u64::from_be_bytes(
                r.take(8)?.try_into().map_err(|_| Error::Integrity)?,
            )),
            _ => None,
        };
        let ids_len = r.u32()? as usize;
        let ids = r.take(ids_len)?.to_vec();
        let count = r.u16()? as usize;
        let mut fields = Vec::with_capacity(count.min(256));
        for _ in 0..count {
            let name = r.u16_str()?;
            let len = r.u32()? as usize;
            let envelope = r.take(len)?.to_vec();
            if fields
                .last()
                .is_some_and(|prev: &StoredField| prev.name >= name)
            {
                return Err(Error::Integrity); // unsorted or repeated
            }
            fields.push(StoredField { name, envelope });
        }
        if !r.0.is_empty() {
            return Err(Error::Integrity);
        }
        let mut t = [0u8; RECORD_TAG_LEN];
        t.copy_from_slice(tag);
        let record = StoredRecord {
            subject,
            key_version,
            written_ms,
            ids,
            fields,
            tag: t,
        };
        Ok((record, body))
    }
}

fn put_u16_str(out: &mut Vec<u8>, s: &str) {
    // Ids and names are bounded by request validation far below u16::MAX.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Integrity);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u16_str(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> StoredRecord {
        StoredRecord {
            subject: [9; 32],
            key_version: 3,
            written_ms: Some(1_700_000_000_123),
            ids: vec![4; 30],
            tag: [7; RECORD_TAG_LEN],
            fields: vec![
                StoredField {
                    name: "a".into(),
                    envelope: vec![1; 40],
                },
                StoredField {
                    name: "b".into(),
                    envelope: vec![2; 33],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = r.encode();
        let (back, body) = StoredRecord::decode(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(body, r.encode_body().as_slice());
        assert_eq!(bytes[0], STORED_RECORD_V3);
        // A record of format 2 (no write time) still reads, as written at
        // an unknown time.
        let old = StoredRecord {
            written_ms: None,
            ..sample()
        };
        let bytes = old.encode();
        assert_eq!(bytes[0], STORED_RECORD_V2);
        assert_eq!(StoredRecord::decode(&bytes).unwrap().0, old);
        // Versions are not interchangeable: the time is 8 bytes more.
        let mut v3_as_v2 = r.encode();
        v3_as_v2[0] = STORED_RECORD_V2;
        assert!(StoredRecord::decode(&v3_as_v2).is_err());
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                matches!(StoredRecord::decode(&bytes[..n]), Err(Error::Integrity)),
                "prefix {n}"
            );
        }
        let mut t = bytes.clone();
        t.push(0);
        assert!(matches!(StoredRecord::decode(&t), Err(Error::Integrity)));
        let mut t = bytes;
        t[0] = 1; // format 1, the subject id in clear: refused
        assert!(matches!(StoredRecord::decode(&t), Err(Error::Integrity)));
    }

    #[test]
    fn repeated_field_is_refused() {
        let mut r = sample();
        r.fields[1].name = "a".into();
        assert!(matches!(
            StoredRecord::decode(&r.encode()),
            Err(Error::Integrity)
        ));
    }

    #[test]
    fn ids_round_trip_and_refuse_anything_else() {
        let plain = encode_ids("subject@example.org", "record-1");
        assert_eq!(
            decode_ids(&plain).unwrap(),
            ("subject@example.org".into(), "record-1".into())
        );
        for n in 0..plain.len() {
            assert!(decode_ids(&plain[..n]).is_err());
        }
        let mut longer = plain.to_vec();
        longer.push(0);
        assert!(decode_ids(&longer).is_err());
    }

    #[test]
    fn keys_split_back() {
        let k = record_key("users", &[7; 32]);
        assert_eq!(split_record_key(&k).unwrap(), ("users", [7; 32]));
        assert!(split_record_key(&k[..k.len() - 1]).is_err());
        let row = subject_key_id(513, &[8; 32], 4);
        assert_eq!(parse_subject_key_id(&row).unwrap(), (513, [8; 32], 4));
        assert!(row.starts_with(&bucket_prefix(513)));
        assert!(parse_subject_key_id(&row[1..]).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StoredRecord::decode(&bytes);
        }

        /// Any record (fields sorted and distinct, as the engine makes
        /// them) decodes from its encoding to itself, with the tag over
        /// exactly the body; a byte more or less is refused.
        #[test]
        fn prop_round_trip(
            subject in any::<[u8; 32]>(),
            key_version in any::<u32>(),
            written_ms in proptest::option::of(any::<u64>()),
            ids in proptest::collection::vec(any::<u8>(), 0..64),
            fields in proptest::collection::btree_map("[a-z_]{1,12}", proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            tag in any::<[u8; RECORD_TAG_LEN]>(),
        ) {
            let r = StoredRecord {
                subject,
                key_version,
                written_ms,
                ids,
                fields: fields
                    .into_iter()
                    .map(|(name, envelope)| StoredField { name, envelope })
                    .collect(),
                tag,
            };
            let bytes = r.encode();
            let (back, body) = StoredRecord::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &r);
            prop_assert_eq!(body, &bytes[..bytes.len() - RECORD_TAG_LEN]);
            prop_assert!(StoredRecord::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(StoredRecord::decode(&longer).map(|(d, _)| d != r).unwrap_or(true));
        }
    }
}
