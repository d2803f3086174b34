//! Collections, their schemas, and the naming rules for names and ids.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Most fields a collection may declare.
pub const MAX_FIELDS: usize = 256;
/// Longest record or subject id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 1024;

/// The type every value of a field has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// Signed 64-bit integer.
    Int64,
    /// IEEE 754 double.
    Double,
    /// Boolean.
    Bool,
    /// Opaque bytes.
    Bytes,
    /// Seconds and nanoseconds since the Unix epoch.
    Timestamp,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Double => "double",
            FieldType::Bool => "bool",
            FieldType::Bytes => "bytes",
            FieldType::Timestamp => "timestamp",
        })
    }
}

/// What kind of personal data a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataCategory {
    /// Names, national ids, dates of birth.
    Identity,
    /// E-mail, phone, postal address.
    Contact,
    /// Card and account numbers, income.
    Financial,
    /// Country, city, coordinates.
    Location,
    /// GDPR Art. 9 special categories.
    Special,
    /// Usage, preferences.
    Behavioural,
    /// Anything else.
    Other,
}

impl DataCategory {
    /// Its name (as in schemas).
    pub fn name(self) -> &'static str {
        match self {
            DataCategory::Identity => "identity",
            DataCategory::Contact => "contact",
            DataCategory::Financial => "financial",
            DataCategory::Location => "location",
            DataCategory::Special => "special",
            DataCategory::Behavioural => "behavioural",
            DataCategory::Other => "other",
        }
    }
}

/// How a masked read shows a string: the first and last characters stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mask {
    /// Characters kept at the start.
    pub keep_first: u32,
    /// Characters kept at the end.
    pub keep_last: u32,
}

impl Mask {
    /// Applies the mask: kept characters stay, every other becomes `*`. A
    /// value no longer than the characters the mask keeps is masked whole
    /// (a short value would otherwise come back in full).
    pub fn apply(&self, s: &str) -> String {
        let n = s.chars().count();
        let (mut first, mut last) = (self.keep_first as usize, self.keep_last as usize);
        if first.saturating_add(last) >= n {
            (first, last) = (0, 0);
        }
        // At most `s.len()` bytes (`*` is one byte, no shorter than the
        // character it replaces): allocated once, so growing never leaves a
        // copy of the kept characters behind in freed memory.
        let mut out = String::with_capacity(s.len());
        out.extend(
            s.chars()
                .enumerate()
                .map(|(i, c)| if i < first || i + last >= n { c } else { '*' }),
        );
        out
    }
}

/// One field of a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSchema {
    /// Field name.
    pub name: String,
    /// Value type.
    pub field_type: FieldType,
    /// Data category.
    pub category: DataCategory,
    /// Whether a blind index is kept (used by search).
    pub indexed: bool,
    /// Mask for masked reads (string fields only).
    pub mask: Option<Mask>,
}

/// A collection and its schema. Stored as JSON: it holds no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    /// Collection name.
    pub name: String,
    /// The region its data must reside in.
    pub region: String,
    /// Free text.
    pub description: String,
    /// The fields.
    pub fields: Vec<FieldSchema>,
    /// How long its records are kept, if the collection says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// Most seconds a time to live or a grace period may be: 100 years.
pub const MAX_RETENTION_SECONDS: u64 = 100 * 366 * 24 * 3600;

/// A collection's retention: a record expires `ttl_seconds` after it was
/// last written. An expired record is unreadable at once (gets and
/// searches pass it by; a subject export lists it, marked expired, while
/// it is held) and purged by the sweeper once it has been expired for
/// `grace_seconds` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Seconds from a record's last write to its expiry (at least 1).
    pub ttl_seconds: u64,
    /// Seconds an expired record waits, unreadable, before it is purged.
    pub grace_seconds: u64,
}

impl Retention {
    /// When a record written at `written_ms` expires (ms since the epoch).
    pub fn expires_at_ms(&self, written_ms: u64) -> u64 {
        written_ms.saturating_add(self.ttl_seconds.saturating_mul(1000))
    }

    /// When a record written at `written_ms` may be purged.
    pub fn purge_at_ms(&self, written_ms: u64) -> u64 {
        self.expires_at_ms(written_ms)
            .saturating_add(self.grace_seconds.saturating_mul(1000))
    }
}

impl Collection {
    /// A field's schema by name.
    pub fn field(&self, name: &str) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks names, counts and masks. The region is checked by the engine.
    pub fn validate(&self) -> Result<()> {
        validate_name("collection name", &self.name, true)?;
        self.region
            .parse::<crate::keys::Region>()
            .map_err(|e| Error::InvalidArgument(format!("collection region: {e}")))?;
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(Error::InvalidArgument(format!(
                "description longer than {MAX_DESCRIPTION_CHARS} characters"
            )));
        }
        if self.fields.is_empty() {
            return Err(Error::InvalidArgument(
                "a collection needs at least one field".into(),
            ));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(Error::InvalidArgument(format!(
                "{} fields; a collection has at most {MAX_FIELDS}",
                self.fields.len()
            )));
        }
        if let Some(r) = &self.retention {
            if r.ttl_seconds == 0 || r.ttl_seconds > MAX_RETENTION_SECONDS {
                return Err(Error::InvalidArgument(format!(
                    "a time to live is 1 to {MAX_RETENTION_SECONDS} seconds (100 years)"
                )));
            }
            if r.grace_seconds > MAX_RETENTION_SECONDS {
                return Err(Error::InvalidArgument(format!(
                    "a grace period is at most {MAX_RETENTION_SECONDS} seconds (100 years)"
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fields {
            validate_name("field name", &f.name, false)?;
            if !seen.insert(f.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "field {} is declared twice",
                    f.name
                )));
            }
            if f.mask.is_some() && f.field_type != FieldType::String {
                return Err(Error::InvalidArgument(format!(
                    "field {} has a mask, but masks apply to string fields only",
                    f.name
                )));
            }
            // A blind index of a boolean is the value itself (two entries);
            // floating-point equality is not what a search means.
            if f.indexed && matches!(f.field_type, FieldType::Bool | FieldType::Double) {
                return Err(Error::InvalidArgument(format!(
                    "field {} is {} and cannot be indexed: an index of it would give the \
                     values away (bool) or not find equal numbers (double)",
                    f.name, f.field_type
                )));
            }
        }
        Ok(())
    }
}

/// A client-supplied name as an error message shows it: at most 64
/// characters, so a hostile name cannot bloat a status message.
pub fn shown(name: &str) -> String {
    if name.chars().count() <= MAX_NAME_CHARS {
        name.to_owned()
    } else {
        let head: String = name.chars().take(MAX_NAME_CHARS).collect();
        format!("{head}…")
    }
}

/// Checks a collection or field name: 1 to 64 characters of `[a-z0-9_]`
/// (and `-` for collections), starting with a letter.
pub fn validate_name(what: &str, name: &str, allow_dash: bool) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || (allow_dash && c == '-')
        });
    if ok {
        Ok(())
    } else {
        let allowed = if allow_dash {
            "a-z, 0-9, '_', '-'"
        } else {
            "a-z, 0-9, '_'"
        };
        Err(Error::InvalidArgument(format!(
            "invalid {what} {:?}: 1 to {MAX_NAME_CHARS} characters of {allowed}, starting with a letter",
            shown(name)
        )))
    }
}

/// Checks a record or subject id: 1 to 128 bytes, no control characters.
/// The id itself is not echoed: ids may be personal data.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{what} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, t: FieldType) -> FieldSchema {
        FieldSchema {
            name: name.into(),
            field_type: t,
            category: DataCategory::Other,
            indexed: false,
            mask: None,
        }
    }

    fn coll(fields: Vec<FieldSchema>) -> Collection {
        Collection {
            name: "users".into(),
            region: "eu".into(),
            description: String::new(),
            fields,
            retention: None,
        }
    }

    #[test]
    fn validation() {
        assert!(coll(vec![field("email", FieldType::String)])
            .validate()
            .is_ok());
        assert!(coll(vec![]).validate().is_err());
        assert!(coll(vec![
            field("a", FieldType::String),
            field("a", FieldType::Int64)
        ])
        .validate()
        .is_err());
        assert!(coll(vec![field("Bad", FieldType::String)])
            .validate()
            .is_err());
        assert!(coll(vec![field("a-b", FieldType::String)])
            .validate()
            .is_err());
        for t in [FieldType::Bool, FieldType::Double] {
            let mut indexed = field("flag", t);
            indexed.indexed = true;
            let e = coll(vec![indexed]).validate().unwrap_err();
            assert!(e.to_string().contains("cannot be indexed"), "{e}");
        }
        for t in [
            FieldType::String,
            FieldType::Int64,
            FieldType::Bytes,
            FieldType::Timestamp,
        ] {
            let mut indexed = field("key", t);
            indexed.indexed = true;
            coll(vec![indexed]).validate().unwrap();
        }
        let mut masked = field("n", FieldType::Int64);
        masked.mask = Some(Mask {
            keep_first: 0,
            keep_last: 2,
        });
        assert!(coll(vec![masked]).validate().is_err());
        let many: Vec<_> = (0..=MAX_FIELDS)
            .map(|i| field(&format!("f{i}"), FieldType::Bool))
            .collect();
        assert!(coll(many).validate().is_err());
        assert!(validate_name("collection name", "user-events", true).is_ok());
        assert!(validate_name("collection name", "", true).is_err());
    }

    #[test]
    fn long_names_are_shortened_in_messages() {
        let long = "x".repeat(10_000);
        let err = validate_name("field name", &long, false)
            .unwrap_err()
            .to_string();
        assert!(err.len() < 300, "{}", err.len());
        assert_eq!(shown("short"), "short");
        let mut c = coll(vec![field("a", FieldType::Bool)]);
        c.region = "EU!".repeat(1000);
        assert!(c.validate().unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn ids() {
        assert!(validate_id("record id", "user:42/é").is_ok());
        assert!(validate_id("record id", "").is_err());
        assert!(validate_id("record id", "a\0b").is_err());
        assert!(validate_id("record id", "a\nb").is_err());
        assert!(validate_id("record id", &"x".repeat(129)).is_err());
    }

    #[test]
    fn masks() {
        let m = Mask {
            keep_first: 1,
            keep_last: 4,
        };
        assert_eq!(m.apply("+33612345678"), "+*******5678");
        // A value no longer than what the mask keeps is masked whole.
        assert_eq!(m.apply("abc"), "***");
        assert_eq!(m.apply("abcde"), "*****");
        assert_eq!(m.apply("abcdef"), "a*cdef");
        assert_eq!(
            Mask {
                keep_first: 0,
                keep_last: 0
            }
            .apply("é1"),
            "**"
        );
    }
}
