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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use zeroize::Zeroizing;

use super::schema::FieldType;
use crate::{Error, Result};

/// A field value. `Debug` shows the type and size, never the content.
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

    /// The plaintext that goes into the field envelope.
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

    /// Decodes decrypted plaintext. Malformed plaintext can only come from a
    /// bug or a forged key, so it is an integrity failure.
    pub fn decode(bytes: &[u8]) -> Result<Value> {
        let (&tag, p) = bytes.split_first().ok_or(Error::Integrity)?;
        let arr8 = |p: &[u8]| -> Result<[u8; 8]> { p.try_into().map_err(|_| Error::Integrity) };
        Ok(match tag {
            1 => Value::String(String::from_utf8(p.to_vec()).map_err(|_| Error::Integrity)?),
            2 => Value::Int64(i64::from_be_bytes(arr8(p)?)),
            3 => Value::Double(f64::from_bits(u64::from_be_bytes(arr8(p)?))),
            4 => match p {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                _ => return Err(Error::Integrity),
            },
            5 => Value::Bytes(p.to_vec()),
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
