//! Typed values and their plaintext encoding inside a field envelope.
//!
//! ```text
//! u8 type tag ‖ payload
//!   1 string    UTF-8 bytes
//!   2 int64     8 bytes big-endian
//!   3 double    8 bytes big-endian IEEE 754 bits
//!   4 bool      1 byte, 0 or 1
//!   5 bytes     raw
//!   6 timestamp i64 seconds big-endian ‖ i32 nanos big-endian (0 ≤ nanos < 10^9)
//! ```
//!
//! Plaintext stays in wiped memory inside the engine: [`Value::encode`]
//! writes into a [`Zeroizing`] buffer, [`Value::from_plaintext`] builds a
//! string or bytes value in the decrypted buffer itself (no copy), and a
//! [`Value`] wipes its heap contents when it is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::schema::FieldType;
use crate::{Error, Result};

/// A field value. `Debug` shows the type and size, never the content.
///
/// Wiped when dropped (see [`Zeroize`]); so a string or bytes value cannot
/// be moved out by a pattern: take it with [`std::mem::take`].
#[derive(Clone, PartialEq)]
pub enum Value {
    /// Text.
    String(String),
    /// Integer.
    Int64(i64),
    /// Floating point.
    Double(f64),
    /// Boolean.
    Bool(bool),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A point in time.
    Timestamp {
        /// Seconds since the Unix epoch.
        seconds: i64,
        /// Nanoseconds, 0 to 999 999 999.
        nanos: i32,
    },
}

/// Zeroes the string or bytes (their whole allocation, spare capacity
/// included) and leaves them empty; zeroes a scalar. The variant stays.
impl Zeroize for Value {
    fn zeroize(&mut self) {
        match self {
            Value::String(s) => s.zeroize(),
            Value::Bytes(b) => b.zeroize(),
            Value::Int64(i) => i.zeroize(),
            Value::Double(d) => d.zeroize(),
            Value::Bool(b) => b.zeroize(),
            Value::Timestamp { seconds, nanos } => {
                seconds.zeroize();
                nanos.zeroize();
            }
        }
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value::{}(<{} bytes>)", self.field_type(), self.size())
    }
}

impl Value {
    /// The type of this value.
    pub fn field_type(&self) -> FieldType {
        match self {
            Value::String(_) => FieldType::String,
            Value::Int64(_) => FieldType::Int64,
            Value::Double(_) => FieldType::Double,
            Value::Bool(_) => FieldType::Bool,
            Value::Bytes(_) => FieldType::Bytes,
            Value::Timestamp { .. } => FieldType::Timestamp,
        }
    }

    /// Payload size in bytes, as counted against the record size limit.
    pub fn size(&self) -> usize {
        match self {
            Value::String(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Int64(_) | Value::Double(_) => 8,
            Value::Bool(_) => 1,
            Value::Timestamp { .. } => 12,
        }
    }

    /// Checks invariants a type alone does not carry.
    pub fn validate(&self, field: &str) -> Result<()> {
        if let Value::Timestamp { nanos, .. } = self {
            if !(0..1_000_000_000).contains(nanos) {
                return Err(Error::InvalidArgument(format!(
                    "field {field}: timestamp nanos must be in 0..1e9"
                )));
            }
        }
        Ok(())
    }

    /// The plaintext that goes into the field envelope, in a wiped buffer
    /// of exactly its size (it never grows, so no reallocation leaves a copy).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(1 + self.size()));
        match self {
            Value::String(s) => {
                out.push(1);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Int64(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Double(d) => {
                out.push(3);
                out.extend_from_slice(&d.to_bits().to_be_bytes());
            }
            Value::Bool(b) => {
                out.push(4);
                out.push(u8::from(*b));
            }
            Value::Bytes(b) => {
                out.push(5);
                out.extend_from_slice(b);
            }
            Value::Timestamp { seconds, nanos } => {
                out.push(6);
                out.extend_from_slice(&seconds.to_be_bytes());
                out.extend_from_slice(&nanos.to_be_bytes());
            }
        }
        out
    }

    /// Decodes plaintext from a borrowed slice: [`Value::from_plaintext`]
    /// on a wiped copy of it.
    pub fn decode(bytes: &[u8]) -> Result<Value> {
        Value::from_plaintext(Zeroizing::new(bytes.to_vec()))
    }

    /// Decodes decrypted plaintext. Malformed plaintext can only come from a
    /// bug or a forged key, so it is an integrity failure.
    ///
    /// A string or bytes value takes over `plaintext`'s buffer (the tag
    /// byte shifted out in place), so no other copy is made; every other
    /// outcome, an error included, leaves it in `plaintext`, wiped on drop.
    pub fn from_plaintext(mut plaintext: Zeroizing<Vec<u8>>) -> Result<Value> {
        let (&tag, p) = plaintext.split_first().ok_or(Error::Integrity)?;
        let arr8 = |p: &[u8]| -> Result<[u8; 8]> { p.try_into().map_err(|_| Error::Integrity) };
        Ok(match tag {
            1 | 5 => {
                // The shift leaves the last byte once more in the spare
                // capacity, which the Value's wipe covers too.
                plaintext.remove(0);
                let buf = std::mem::take(&mut *plaintext);
                if tag == 5 {
                    Value::Bytes(buf)
                } else {
                    match String::from_utf8(buf) {
                        Ok(s) => Value::String(s),
                        Err(e) => {
                            drop(Zeroizing::new(e.into_bytes()));
                            return Err(Error::Integrity);
                        }
                    }
                }
            }
            2 => Value::Int64(i64::from_be_bytes(arr8(p)?)),
            3 => Value::Double(f64::from_bits(u64::from_be_bytes(arr8(p)?))),
            4 => match p {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                _ => return Err(Error::Integrity),
            },
            6 if p.len() == 12 => {
                let seconds = i64::from_be_bytes(arr8(&p[..8])?);
                let nanos = i32::from_be_bytes([p[8], p[9], p[10], p[11]]);
                if !(0..1_000_000_000).contains(&nanos) {
                    return Err(Error::Integrity);
                }
                Value::Timestamp { seconds, nanos }
            }
            _ => return Err(Error::Integrity),
        })
    }
}

/// A record as the engine sees it: plaintext, inside the vault only.
/// `Debug` shows the collection, the lengths of the ids and the field names
/// with their types, never values (ids too may be personal data).
#[derive(Clone, PartialEq)]
pub struct Record {
    /// Collection.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The data subject.
    pub subject_id: String,
    /// Field name to value.
    pub fields: BTreeMap<String, Value>,
    /// On read: projected fields present in the record that the caller's
    /// policy does not show (they were not decrypted). Ignored on write.
    pub redacted: BTreeSet<String>,
    /// On read: fields whose values the caller's policy masked. Ignored on
    /// write.
    pub masked: BTreeSet<String>,
}

impl Record {
    /// A record to write.
    pub fn new(
        collection: impl Into<String>,
        id: impl Into<String>,
        subject_id: impl Into<String>,
        fields: BTreeMap<String, Value>,
    ) -> Self {
        Record {
            collection: collection.into(),
            id: id.into(),
            subject_id: subject_id.into(),
            fields,
            redacted: BTreeSet::new(),
            masked: BTreeSet::new(),
        }
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("collection", &self.collection)
            .field("id", &format_args!("<{} bytes>", self.id.len()))
            .field(
                "subject_id",
                &format_args!("<{} bytes>", self.subject_id.len()),
            )
            .field("fields", &self.fields)
            .field("redacted", &self.redacted)
            .field("masked", &self.masked)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip_every_type() {
        let values = [
            Value::String("ada@example.eu".into()),
            Value::String(String::new()),
            Value::Int64(-42),
            Value::Double(3.5),
            Value::Double(f64::NAN),
            Value::Bool(true),
            Value::Bool(false),
            Value::Bytes(vec![0, 255, 7]),
            Value::Timestamp {
                seconds: -1,
                nanos: 999_999_999,
            },
        ];
        for v in values {
            let back = Value::decode(&v.encode()).unwrap();
            match (&v, &back) {
                (Value::Double(a), Value::Double(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(v, back),
            }
        }
    }

    fn every_kind() -> Vec<Value> {
        vec![
            Value::String("ada@example.eu".into()),
            Value::String("é✓ multi-byte".into()),
            Value::String(String::new()),
            Value::Int64(-42),
            Value::Double(3.5),
            Value::Bool(true),
            Value::Bool(false),
            Value::Bytes(vec![0, 255, 7]),
            Value::Bytes(Vec::new()),
            Value::Timestamp {
                seconds: -1,
                nanos: 999_999_999,
            },
        ]
    }

    #[test]
    fn from_plaintext_round_trips_every_kind_in_place() {
        for v in every_kind() {
            let plaintext = v.encode();
            assert_eq!(plaintext.capacity(), plaintext.len(), "{v:?}: exact size");
            let at = plaintext.as_ptr();
            let back = Value::from_plaintext(plaintext).unwrap();
            assert_eq!(back, v);
            // A non-empty string or bytes value owns the decrypted buffer
            // itself: no other copy of the plaintext was made.
            match &back {
                Value::String(s) if !s.is_empty() => assert_eq!(s.as_ptr(), at),
                Value::Bytes(b) if !b.is_empty() => assert_eq!(b.as_ptr(), at),
                _ => {}
            }
        }
        for bad in [&[][..], &[9], &[1, 0xFF], &[1, b'a', 0xC3], &[4, 2]] {
            assert!(matches!(
                Value::from_plaintext(Zeroizing::new(bad.to_vec())),
                Err(Error::Integrity)
            ));
        }
    }

    #[test]
    fn zeroize_empties_strings_and_bytes_and_zeroes_scalars() {
        let mut s = Value::String("secret@example.eu".into());
        s.zeroize();
        assert_eq!(s, Value::String(String::new()));
        let mut b = Value::Bytes(vec![1, 2, 3]);
        b.zeroize();
        assert_eq!(b, Value::Bytes(Vec::new()));
        for (mut v, zero) in [
            (Value::Int64(-42), Value::Int64(0)),
            (Value::Double(3.5), Value::Double(0.0)),
            (Value::Bool(true), Value::Bool(false)),
            (
                Value::Timestamp {
                    seconds: 7,
                    nanos: 9,
                },
                Value::Timestamp {
                    seconds: 0,
                    nanos: 0,
                },
            ),
        ] {
            v.zeroize();
            assert_eq!(v, zero);
        }
    }

    #[test]
    fn debug_hides_content() {
        let shown = format!("{:?}", Value::String("secret@example.eu".into()));
        assert!(!shown.contains("secret"), "{shown}");
        let record = Record::new(
            "users",
            "ada@example.eu",
            "person-ada",
            BTreeMap::from([(
                "email".to_string(),
                Value::String("secret@example.eu".into()),
            )]),
        );
        let shown = format!("{record:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("ada"),
            "{shown}"
        );
        assert!(
            shown.contains("email") && shown.contains("users"),
            "{shown}"
        );
    }

    #[test]
    fn malformed_plaintext() {
        for bad in [&[][..], &[9], &[2, 1, 2], &[4, 2], &[1, 0xFF], &[6, 0, 0]] {
            assert!(
                matches!(Value::decode(bad), Err(Error::Integrity)),
                "{bad:?}"
            );
        }
        let bad_nanos = Value::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(bad_nanos.validate("t").is_err());
        assert!(Value::decode(&bad_nanos.encode()).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = Value::decode(&bytes);
        }
    }
}
