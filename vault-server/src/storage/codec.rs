//! Keys and the stored record codec.
//!
//! Record key: `collection ‖ 0x00 ‖ record id` (names and ids never hold 0x00).
//! Subject key row: `subject id ‖ 0x00 ‖ u32 key version`.
//! Subject → records index entry: `subject id ‖ 0x00 ‖ record key`.
//!
//! Stored record, version 1 (integers big-endian):
//!
//! ```text
//!  ┌ body ───────────────────────────────────────────────────────────────┐
//!  │ u8  version = 1                                                     │
//!  │ u16 subject id length ‖ subject id (UTF-8)                          │
//!  │ u32 subject key version (of every envelope and of the record tag)   │
//!  │ u16 field count                                                     │
//!  │ per field, in name order:                                           │
//!  │     u16 name length ‖ name (UTF-8) ‖ u32 envelope length ‖ envelope │
//!  └─────────────────────────────────────────────────────────────────────┘
//!  32 bytes record tag = HMAC-SHA256 over the body (see `crypto::record_tag`)
//! ```
//!
//! Field values exist here only as envelopes (see `crypto::seal_field`).
//! The envelopes authenticate each value; the record tag authenticates the
//! record as a whole (its subject, its set of fields), so a dropped field or
//! a swapped subject is caught too. Anything that does not parse exactly,
//! with no trailing bytes, is an integrity failure.

use crate::{Error, Result};

/// The stored record format this build writes and reads.
pub const STORED_RECORD_V1: u8 = 1;

/// The key of a record in [`super::Table::Records`].
pub fn record_key(collection: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 1 + id.len());
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `subject ‖ 0`: the prefix of a subject's key rows and index entries.
/// Ids hold no control characters, so no subject's prefix is another's.
pub fn subject_key_prefix(subject: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(subject.len() + 1);
    p.extend_from_slice(subject.as_bytes());
    p.push(0);
    p
}

/// `subject ‖ 0 ‖ u32 version`: a wrapped subject key's row.
pub fn subject_key_id(subject: &str, version: u32) -> Vec<u8> {
    let mut k = subject_key_prefix(subject);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Splits a subject key row's key into subject and version.
pub fn parse_subject_key_id(key: &[u8]) -> Result<(&str, u32)> {
    let (head, version) = key.split_last_chunk::<4>().ok_or(Error::Integrity)?;
    let subject = head.strip_suffix(&[0]).ok_or(Error::Integrity)?;
    let subject = std::str::from_utf8(subject).map_err(|_| Error::Integrity)?;
    Ok((subject, u32::from_be_bytes(*version)))
}

/// `subject ‖ 0 ‖ record key`: one entry of the subject → records index.
pub fn subject_record_key(subject: &str, record_key: &[u8]) -> Vec<u8> {
    let mut k = subject_key_prefix(subject);
    k.extend_from_slice(record_key);
    k
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

/// A record as stored: the subject, the key version, the encrypted fields
/// and the record tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The data subject the record is about.
    pub subject_id: String,
    /// The subject key version of every envelope and of the tag.
    pub key_version: u32,
    /// The fields, sorted by name.
    pub fields: Vec<StoredField>,
    /// HMAC-SHA256 over the encoded body.
    pub tag: [u8; RECORD_TAG_LEN],
}

impl StoredRecord {
    /// Encodes the body: everything but the tag. Names and ids are bounded
    /// by request validation far below u16::MAX, envelopes far below u32::MAX.
    pub fn encode_body(&self) -> Vec<u8> {
        let size: usize = 9
            + RECORD_TAG_LEN
            + self.subject_id.len()
            + self
                .fields
                .iter()
                .map(|f| 6 + f.name.len() + f.envelope.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.push(STORED_RECORD_V1);
        put_u16_str(&mut out, &self.subject_id);
        out.extend_from_slice(&self.key_version.to_be_bytes());
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
        if r.u8()? != STORED_RECORD_V1 {
            return Err(Error::Integrity);
        }
        let subject_id = r.u16_str()?;
        let key_version = r.u32()?;
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
            subject_id,
            key_version,
            fields,
            tag: t,
        };
        Ok((record, body))
    }
}

fn put_u16_str(out: &mut Vec<u8>, s: &str) {
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
            subject_id: "subject-1".into(),
            key_version: 3,
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
        t[0] = 2;
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
            subject in "[a-z0-9]{1,16}",
            key_version in any::<u32>(),
            fields in proptest::collection::btree_map("[a-z_]{1,12}", proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            tag in any::<[u8; RECORD_TAG_LEN]>(),
        ) {
            let r = StoredRecord {
                subject_id: subject,
                key_version,
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
