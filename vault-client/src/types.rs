//! The client's own data types: values, records and collection schemas.
//!
//! These mirror the wire messages of `vault.v1` but are plain Rust: a value is
//! an enum rather than a message with an optional `oneof`, enums are Rust
//! enums without an "unspecified" member, and record fields are kept sorted by
//! name. The conversions to and from the wire types live in `convert`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Why a string could not be parsed into one of this crate's types (a field
/// type, a data category, a field spec or a timestamp).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    message: String,
}

impl ParseError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch
/// (1970-01-01T00:00:00Z), as in `google.protobuf.Timestamp`.
///
/// `nanos` is meant to lie in `0..=999_999_999`, counting forward even for
/// instants before the epoch (so -0.5 s is `{ seconds: -1, nanos: 500_000_000 }`);
/// a value outside that range is normalised when it is sent.
///
/// `Display` and `FromStr` use RFC 3339 (`1990-05-17T08:30:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Whole seconds since the Unix epoch; negative before it.
    pub seconds: i64,
    /// Nanoseconds added to `seconds`, in `0..=999_999_999`.
    pub nanos: i32,
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

impl Timestamp {
    /// A timestamp of whole seconds since the Unix epoch.
    pub const fn from_unix_seconds(seconds: i64) -> Self {
        Self { seconds, nanos: 0 }
    }

    /// The current time.
    pub fn now() -> Self {
        SystemTime::now().into()
    }

    /// The same instant with `nanos` in `0..=999_999_999` (saturating at the
    /// ends of the `i64` range of seconds).
    pub fn normalized(self) -> Self {
        let extra = i64::from(self.nanos).div_euclid(NANOS_PER_SECOND);
        let nanos = i64::from(self.nanos).rem_euclid(NANOS_PER_SECOND);
        match self.seconds.checked_add(extra) {
            Some(seconds) => Self {
                seconds,
                // rem_euclid by 1e9 is in 0..1e9, which fits an i32.
                nanos: i32::try_from(nanos).unwrap_or(0),
            },
            None if extra < 0 => Self {
                seconds: i64::MIN,
                nanos: 0,
            },
            None => Self {
                seconds: i64::MAX,
                nanos: 999_999_999,
            },
        }
    }

    /// The instant as a [`SystemTime`], or `None` if the platform cannot
    /// represent it.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let ts = self.normalized();
        // normalized() puts nanos in 0..1e9, so the conversion cannot fail.
        let nanos = u32::try_from(ts.nanos).ok()?;
        if ts.seconds >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(ts.seconds.unsigned_abs(), nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(ts.seconds.unsigned_abs()))?
                .checked_add(Duration::from_nanos(u64::from(nanos)))
        }
    }

    /// Parses an RFC 3339 timestamp such as `2024-03-01T12:00:00Z`,
    /// `2024-03-01t12:00:00.25+01:00` or `2024-03-01 12:00:00Z`. A bare date
    /// (`1990-05-17`) is taken as midnight UTC. Leap seconds (`:60`) are refused.
    /// A year outside 0000–9999 is read in the signed form that
    /// [`Timestamp::to_rfc3339`] writes it in (`+10000-01-01T00:00:00Z`,
    /// `-249-10-15T19:33:20Z`), so every timestamp reads back.
    pub fn parse_rfc3339(text: &str) -> Result<Self, ParseError> {
        parse_rfc3339(text).ok_or_else(|| {
            ParseError::new("not an RFC 3339 timestamp (expected e.g. 2024-03-01T12:00:00Z)")
        })
    }

    /// Formats as RFC 3339 in UTC, with as many fractional digits as needed
    /// (none, 3, 6 or 9): `2024-03-01T12:00:00.250Z`.
    pub fn to_rfc3339(self) -> String {
        let ts = self.normalized();
        let days = ts.seconds.div_euclid(SECONDS_PER_DAY);
        let secs_of_day = ts.seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (
            secs_of_day / 3600,
            (secs_of_day % 3600) / 60,
            secs_of_day % 60,
        );
        let date = if (0..=9999).contains(&year) {
            format!("{year:04}-{month:02}-{day:02}")
        } else {
            // Outside RFC 3339's range; ISO 8601's expanded years keep it readable.
            format!("{year:+}-{month:02}-{day:02}")
        };
        let fraction = match ts.nanos {
            0 => String::new(),
            n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
            n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
            n => format!(".{n:09}"),
        };
        format!("{date}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl FromStr for Timestamp {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_rfc3339(s)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self {
                seconds: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                // subsec_nanos() < 1e9 fits an i32.
                nanos: i32::try_from(after.subsec_nanos()).unwrap_or(0),
            },
            Err(before) => {
                let before = before.duration();
                let seconds = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                Self {
                    seconds: -seconds,
                    nanos: -i32::try_from(before.subsec_nanos()).unwrap_or(0),
                }
                .normalized()
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is in 1..=31 and month in 1..=12 by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Reads exactly `n` ASCII digits from the front of `s`.
fn take_digits(s: &mut &[u8], n: usize) -> Option<u32> {
    if s.len() < n || !s[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = s[..n]
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    *s = &s[n..];
    Some(value)
}

fn take_byte(s: &mut &[u8], allowed: &[u8]) -> Option<u8> {
    let (&first, rest) = s.split_first()?;
    if !allowed.contains(&first) {
        return None;
    }
    *s = rest;
    Some(first)
}

/// Reads a year from the front of `s`: four digits, or a sign and 1 to 12
/// digits (the form `to_rfc3339` gives years outside 0000–9999).
fn take_year(s: &mut &[u8]) -> Option<i64> {
    let Some(sign) = take_byte(s, b"+-") else {
        return take_digits(s, 4).map(i64::from);
    };
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 12 {
        return None;
    }
    let magnitude = s[..digits]
        .iter()
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    *s = &s[digits..];
    Some(if sign == b'-' { -magnitude } else { magnitude })
}

fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let mut s = text.trim().as_bytes();
    let year = take_year(&mut s)?;
    take_byte(&mut s, b"-")?;
    let month = take_digits(&mut s, 2)?;
    take_byte(&mut s, b"-")?;
    let day = take_digits(&mut s, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if s.is_empty() {
        return Some(Timestamp::from_unix_seconds(
            days.checked_mul(SECONDS_PER_DAY)?,
        ));
    }

    take_byte(&mut s, b"Tt ")?;
    let hour = take_digits(&mut s, 2)?;
    take_byte(&mut s, b":")?;
    let minute = take_digits(&mut s, 2)?;
    take_byte(&mut s, b":")?;
    let second = take_digits(&mut s, 2)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut nanos = 0u32;
    if take_byte(&mut s, b".").is_some() {
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let fraction = take_digits(&mut s, digits)?;
        // digits <= 9, so the exponent is at most 8 and the product < 1e9.
        nanos = fraction * 10u32.pow(9 - u32::try_from(digits).ok()?);
    }

    let offset_seconds = match take_byte(&mut s, b"Zz+-")? {
        b'Z' | b'z' => 0,
        sign => {
            let oh = take_digits(&mut s, 2)?;
            take_byte(&mut s, b":")?;
            let om = take_digits(&mut s, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = i64::from(oh * 3600 + om * 60);
            if sign == b'-' {
                -offset
            } else {
                offset
            }
        }
    };
    if !s.is_empty() {
        return None;
    }

    // In i128: near the ends of the i64 range, the start of the day or the
    // local time may lie outside it while the instant itself does not.
    let local = i128::from(days) * i128::from(SECONDS_PER_DAY)
        + i128::from(hour * 3600 + minute * 60 + second);
    Some(Timestamp {
        seconds: i64::try_from(local - i128::from(offset_seconds)).ok()?,
        nanos: i32::try_from(nanos).ok()?,
    })
}

/// A typed field value. Each variant matches one [`FieldType`]. `Debug`
/// shows the type only, never the content (values are personal data and
/// must not reach logs by accident).
#[derive(Clone, PartialEq)]
pub enum Value {
    /// UTF-8 text ([`FieldType::String`]).
    String(String),
    /// A signed 64-bit integer ([`FieldType::Int64`]).
    Int64(i64),
    /// An IEEE 754 double ([`FieldType::Double`]).
    Double(f64),
    /// A boolean ([`FieldType::Bool`]).
    Bool(bool),
    /// Opaque bytes ([`FieldType::Bytes`]).
    Bytes(Vec<u8>),
    /// A point in time ([`FieldType::Timestamp`]).
    Timestamp(Timestamp),
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value::{}(<redacted>)", self.field_type())
    }
}

impl Value {
    /// The field type this value belongs to.
    pub fn field_type(&self) -> FieldType {
        match self {
            Value::String(_) => FieldType::String,
            Value::Int64(_) => FieldType::Int64,
            Value::Double(_) => FieldType::Double,
            Value::Bool(_) => FieldType::Bool,
            Value::Bytes(_) => FieldType::Bytes,
            Value::Timestamp(_) => FieldType::Timestamp,
        }
    }

    /// The text, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Shows the value for people: strings as they are, numbers and booleans as
/// usual (doubles always with a decimal point or exponent), bytes as standard
/// base64 and timestamps as RFC 3339.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => f.write_str(s),
            Value::Int64(n) => write!(f, "{n}"),
            Value::Double(x) => write!(f, "{x:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Bytes(bytes) => {
                f.write_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Value::Timestamp(ts) => write!(f, "{ts}"),
        }
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::String(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::String(value)
    }
}

impl From<&String> for Value {
    fn from(value: &String) -> Self {
        Value::String(value.clone())
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Int64(value)
    }
}

impl From<i32> for Value {
    fn from(value: i32) -> Self {
        Value::Int64(i64::from(value))
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Self {
        Value::Int64(i64::from(value))
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Double(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Value::Bool(value)
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Self {
        Value::Bytes(value)
    }
}

impl From<&[u8]> for Value {
    fn from(value: &[u8]) -> Self {
        Value::Bytes(value.to_vec())
    }
}

impl From<Timestamp> for Value {
    fn from(value: Timestamp) -> Self {
        Value::Timestamp(value)
    }
}

impl From<SystemTime> for Value {
    fn from(value: SystemTime) -> Self {
        Value::Timestamp(value.into())
    }
}

/// A record: the data of one collection about one data subject (a person).
///
/// A record read from the vault also says what the caller's access policy
/// did to it: [`redacted`](Record::redacted) names the fields the record
/// has that the policy does not show (they are absent from `fields`, and
/// were not decrypted), [`masked`](Record::masked) the fields whose values
/// in `fields` were masked inside the vault. Both are empty for a record
/// built here, and are never sent (the vault decides them on each read):
/// writing back a record read with redacted or masked fields would replace
/// the stored values with what the policy let through.
///
/// `Debug` shows the collection, the lengths of the ids, and the field names
/// with their types, never values (ids too may be personal data).
#[derive(Clone, PartialEq, Default)]
pub struct Record {
    /// The collection the record belongs to.
    pub collection: String,
    /// Record id, unique within the collection.
    pub id: String,
    /// The data subject the record is about; each subject has its own key.
    pub subject_id: String,
    /// Field name to value, sorted by name.
    pub fields: BTreeMap<String, Value>,
    /// On read: the fields the record has that the caller's policy does not
    /// show, sorted by name. They are not in `fields`, and the vault did not
    /// decrypt them. Not sent on write.
    pub redacted: BTreeSet<String>,
    /// On read: the fields of `fields` whose values the caller's policy
    /// masked inside the vault (the schema's mask), sorted by name. Not sent
    /// on write.
    pub masked: BTreeSet<String>,
}

impl Record {
    /// An empty record of `collection` with this `id`, about `subject_id`.
    pub fn new(
        collection: impl Into<String>,
        id: impl Into<String>,
        subject_id: impl Into<String>,
    ) -> Self {
        Self {
            collection: collection.into(),
            id: id.into(),
            subject_id: subject_id.into(),
            ..Self::default()
        }
    }

    /// The record with `field` set to `value`:
    /// `Record::new("users", "u1", "s1").with("email", "a@b.eu")`.
    #[must_use]
    pub fn with(mut self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.set(field, value);
        self
    }

    /// Sets `field` to `value`, returning the value it had. The field is no
    /// longer [`redacted`](Record::redacted) or [`masked`](Record::masked):
    /// the value is the caller's own.
    pub fn set(&mut self, field: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let field = field.into();
        self.redacted.remove(&field);
        self.masked.remove(&field);
        self.fields.insert(field, value.into())
    }

    /// The value of `field`, if the record has it.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field)
    }

    /// Whether the caller's policy withheld `field` (it is in
    /// [`redacted`](Record::redacted)).
    pub fn is_redacted(&self, field: &str) -> bool {
        self.redacted.contains(field)
    }

    /// Whether the value of `field` is masked (it is in
    /// [`masked`](Record::masked)).
    pub fn is_masked(&self, field: &str) -> bool {
        self.masked.contains(field)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// A field's type in place of its value.
        struct Types<'a>(&'a BTreeMap<String, Value>);
        impl fmt::Debug for Types<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut map = f.debug_map();
                for (name, value) in self.0 {
                    map.entry(name, &format_args!("{}", value.field_type()));
                }
                map.finish()
            }
        }
        f.debug_struct("Record")
            .field("collection", &self.collection)
            .field("id", &format_args!("<{} bytes>", self.id.len()))
            .field(
                "subject_id",
                &format_args!("<{} bytes>", self.subject_id.len()),
            )
            .field("fields", &Types(&self.fields))
            .field("redacted", &self.redacted)
            .field("masked", &self.masked)
            .finish()
    }
}

/// The result of [`VaultClient::get_many`](crate::VaultClient::get_many).
/// Its `Debug` shows no value and no id (ids may be personal data).
#[derive(Clone, PartialEq, Default)]
pub struct BatchGet {
    /// The records found, in the order of the requested ids.
    pub records: Vec<Record>,
    /// The requested ids that have no record.
    pub missing_ids: Vec<String>,
}

impl fmt::Debug for BatchGet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchGet")
            .field("records", &self.records)
            .field(
                "missing_ids",
                &format_args!("<{} ids>", self.missing_ids.len()),
            )
            .finish()
    }
}

/// The type of a field's values.
///
/// `Display`/`FromStr`/serde use `string`, `int64`, `double`, `bool`,
/// `bytes` and `timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// Signed 64-bit integer.
    Int64,
    /// IEEE 754 double.
    Double,
    /// true or false.
    Bool,
    /// Opaque bytes.
    Bytes,
    /// A point in time.
    Timestamp,
}

impl FieldType {
    /// Every field type, in wire order.
    pub const ALL: [FieldType; 6] = [
        FieldType::String,
        FieldType::Int64,
        FieldType::Double,
        FieldType::Bool,
        FieldType::Bytes,
        FieldType::Timestamp,
    ];

    /// The snake_case name: `string`, `int64`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Double => "double",
            FieldType::Bool => "bool",
            FieldType::Bytes => "bytes",
            FieldType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FieldType {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "unknown field type `{s}` (expected one of: {})",
                    join_names(FieldType::ALL.iter().map(|t| t.as_str()))
                ))
            })
    }
}

/// What kind of personal data a field holds.
///
/// `Display`/`FromStr`/serde use `identity`, `contact`, `financial`,
/// `location`, `special`, `behavioural` and `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataCategory {
    /// Names, national ids, dates of birth.
    Identity,
    /// E-mail addresses, phone numbers, postal addresses.
    Contact,
    /// Card and account numbers, income.
    Financial,
    /// Country, city, coordinates.
    Location,
    /// GDPR Art. 9 data: health, religion, ethnicity, biometrics, ...
    Special,
    /// Usage, preferences, browsing.
    Behavioural,
    /// Anything else.
    Other,
}

impl DataCategory {
    /// Every category, in wire order.
    pub const ALL: [DataCategory; 7] = [
        DataCategory::Identity,
        DataCategory::Contact,
        DataCategory::Financial,
        DataCategory::Location,
        DataCategory::Special,
        DataCategory::Behavioural,
        DataCategory::Other,
    ];

    /// The snake_case name: `identity`, `contact`, ...
    pub const fn as_str(self) -> &'static str {
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

impl fmt::Display for DataCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataCategory {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataCategory::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "unknown data category `{s}` (expected one of: {})",
                    join_names(DataCategory::ALL.iter().map(|c| c.as_str()))
                ))
            })
    }
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// How a masked read shows a string value: the first `keep_first` and the
/// last `keep_last` characters stay, every other character becomes `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mask {
    /// Characters kept at the start.
    pub keep_first: u32,
    /// Characters kept at the end.
    pub keep_last: u32,
}

/// One field of a collection's schema.
///
/// `FromStr` and `Display` use the compact spec of `vaultctl --field`:
/// `name:type:category[:indexed][:mask=F,L]`, for example
/// `email:string:contact:indexed:mask=1,4`. Serde uses an object
/// `{"name", "type", "category", "indexed", "mask": {"keep_first", "keep_last"}}`
/// (`field_type` is accepted for `type`; `indexed` and `mask` may be left out).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSchema {
    /// Field name: 1 to 64 characters of `[a-z0-9_]`, starting with a letter.
    pub name: String,
    /// The type every value of this field must have.
    #[serde(rename = "type", alias = "field_type")]
    pub field_type: FieldType,
    /// The kind of personal data the field holds.
    pub category: DataCategory,
    /// Whether the field gets a blind index for equality search.
    #[serde(default)]
    pub indexed: bool,
    /// How the field is shown to a caller whose policy says "masked"; only
    /// for string fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Mask>,
}

impl FieldSchema {
    /// A field that is neither indexed nor masked.
    pub fn new(name: impl Into<String>, field_type: FieldType, category: DataCategory) -> Self {
        Self {
            name: name.into(),
            field_type,
            category,
            indexed: false,
            mask: None,
        }
    }

    /// The field, with a blind index.
    #[must_use]
    pub fn indexed(mut self) -> Self {
        self.indexed = true;
        self
    }

    /// The field, masked to its first `keep_first` and last `keep_last`
    /// characters.
    #[must_use]
    pub fn masked(mut self, keep_first: u32, keep_last: u32) -> Self {
        self.mask = Some(Mask {
            keep_first,
            keep_last,
        });
        self
    }
}

/// Whether `name` is a valid field name: 1 to 64 characters of `[a-z0-9_]`,
/// starting with a letter.
pub fn is_valid_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

impl FromStr for FieldSchema {
    type Err = ParseError;

    /// Parses `name:type:category[:indexed][:mask=F,L]`; the options may come
    /// in either order, each at most once, and a mask needs a string field.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        const GRAMMAR: &str = "expected name:type:category[:indexed][:mask=F,L]";
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default();
        let (Some(field_type), Some(category)) = (parts.next(), parts.next()) else {
            return Err(ParseError::new(format!(
                "bad field spec `{spec}`: {GRAMMAR}"
            )));
        };
        if !is_valid_field_name(name) {
            return Err(ParseError::new(format!(
                "bad field spec `{spec}`: field name `{name}` must be 1 to 64 characters of \
                 [a-z0-9_] starting with a letter"
            )));
        }
        let field_type: FieldType = field_type
            .parse()
            .map_err(|e| ParseError::new(format!("bad field spec `{spec}`: {e}")))?;
        let category: DataCategory = category
            .parse()
            .map_err(|e| ParseError::new(format!("bad field spec `{spec}`: {e}")))?;
        let mut field = FieldSchema::new(name, field_type, category);

        let mut seen_indexed = false;
        for option in parts {
            if option == "indexed" {
                if seen_indexed {
                    return Err(ParseError::new(format!(
                        "bad field spec `{spec}`: `indexed` given twice"
                    )));
                }
                seen_indexed = true;
                field.indexed = true;
            } else if let Some(mask) = option.strip_prefix("mask=") {
                if field.mask.is_some() {
                    return Err(ParseError::new(format!(
                        "bad field spec `{spec}`: `mask` given twice"
                    )));
                }
                field.mask = Some(parse_mask(mask).ok_or_else(|| {
                    ParseError::new(format!(
                        "bad field spec `{spec}`: mask must be mask=F,L with two \
                         non-negative integers (characters kept first and last)"
                    ))
                })?);
            } else {
                return Err(ParseError::new(format!(
                    "bad field spec `{spec}`: unknown option `{option}` ({GRAMMAR})"
                )));
            }
        }
        if field.mask.is_some() && field.field_type != FieldType::String {
            return Err(ParseError::new(format!(
                "bad field spec `{spec}`: a mask is only allowed on string fields"
            )));
        }
        Ok(field)
    }
}

fn parse_mask(text: &str) -> Option<Mask> {
    let (first, last) = text.split_once(',')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(last) {
        return None;
    }
    Some(Mask {
        keep_first: first.parse().ok()?,
        keep_last: last.parse().ok()?,
    })
}

impl fmt::Display for FieldSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.name, self.field_type, self.category)?;
        if self.indexed {
            f.write_str(":indexed")?;
        }
        if let Some(mask) = self.mask {
            write!(f, ":mask={},{}", mask.keep_first, mask.keep_last)?;
        }
        Ok(())
    }
}

/// A collection: a named set of records sharing a schema, resident in one
/// region.
///
/// Serde uses `{"name", "region", "description", "fields": [...],
/// "retention": {"ttl_seconds", "grace_seconds"}}` with every key but
/// `fields` optional (the form of `vaultctl collection create --schema`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    /// Collection name: 1 to 64 characters of `[a-z0-9_-]`, starting with a
    /// letter.
    #[serde(default)]
    pub name: String,
    /// The region its data resides in (for example `eu`). Empty on creation
    /// means the vault's own region.
    #[serde(default)]
    pub region: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// The fields, names unique.
    pub fields: Vec<FieldSchema>,
    /// How long records are kept (`None`: until deleted or erased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// A collection's retention: a record expires `ttl_seconds` after its last
/// write (by the vault's clock); gets and searches pass an expired record
/// by at once, and the vault purges it once it has been expired for
/// `grace_seconds` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Seconds from a record's last write to its expiry (1 to 100 years).
    pub ttl_seconds: u64,
    /// Seconds an expired record waits, unreadable, before it is purged.
    #[serde(default)]
    pub grace_seconds: u64,
}

impl Collection {
    /// A collection without fields, in the vault's own region.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The collection with its region set.
    #[must_use]
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// The collection with its description set.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The collection with a retention: records expire `ttl` after their
    /// last write and are purged `grace` later (whole seconds).
    #[must_use]
    pub fn retention(mut self, ttl: std::time::Duration, grace: std::time::Duration) -> Self {
        self.retention = Some(Retention {
            ttl_seconds: ttl.as_secs(),
            grace_seconds: grace.as_secs(),
        });
        self
    }

    /// The collection with `field` added to its schema.
    #[must_use]
    pub fn field(mut self, field: FieldSchema) -> Self {
        self.fields.push(field);
        self
    }

    /// The schema of the field called `name`.
    pub fn field_schema(&self, name: &str) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn value_debug_shows_no_content() {
        let shown = format!("{:?}", Value::String("ada@example.eu".into()));
        assert_eq!(shown, "Value::string(<redacted>)");
    }

    use super::*;

    #[test]
    fn field_type_names_round_trip() {
        for t in FieldType::ALL {
            assert_eq!(t.to_string().parse::<FieldType>(), Ok(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{t}\""));
        }
        assert_eq!(FieldType::Int64.to_string(), "int64");
        assert!("String".parse::<FieldType>().is_err());
        assert!("int".parse::<FieldType>().is_err());
    }

    #[test]
    fn category_names_round_trip() {
        for c in DataCategory::ALL {
            assert_eq!(c.to_string().parse::<DataCategory>(), Ok(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
        }
        assert_eq!(DataCategory::Behavioural.to_string(), "behavioural");
        let err = "behavioral".parse::<DataCategory>().unwrap_err();
        assert!(err.to_string().contains("behavioural"), "{err}");
    }

    #[test]
    fn field_spec_parses_every_form() {
        assert_eq!(
            "email:string:contact:indexed:mask=1,4".parse::<FieldSchema>(),
            Ok(
                FieldSchema::new("email", FieldType::String, DataCategory::Contact)
                    .indexed()
                    .masked(1, 4)
            )
        );
        assert_eq!(
            "email:string:contact:mask=0,12:indexed".parse::<FieldSchema>(),
            Ok(
                FieldSchema::new("email", FieldType::String, DataCategory::Contact)
                    .indexed()
                    .masked(0, 12)
            )
        );
        assert_eq!(
            "birth_date:timestamp:identity".parse::<FieldSchema>(),
            Ok(FieldSchema::new(
                "birth_date",
                FieldType::Timestamp,
                DataCategory::Identity
            ))
        );
        assert_eq!(
            "score2:double:behavioural:indexed".parse::<FieldSchema>(),
            Ok(FieldSchema::new("score2", FieldType::Double, DataCategory::Behavioural).indexed())
        );
    }

    #[test]
    fn field_spec_display_round_trips() {
        for spec in [
            "email:string:contact:indexed:mask=1,4",
            "n:int64:other",
            "p:bytes:special:indexed",
            "s:string:identity:mask=2,0",
        ] {
            let field: FieldSchema = spec.parse().unwrap();
            assert_eq!(field.to_string(), spec);
        }
    }

    #[test]
    fn field_spec_rejects_bad_specs() {
        let cases = [
            ("", "expected name:type:category"),
            ("email", "expected name:type:category"),
            ("email:string", "expected name:type:category"),
            (":string:contact", "field name"),
            ("Email:string:contact", "field name"),
            ("1email:string:contact", "field name"),
            ("e-mail:string:contact", "field name"),
            ("email:text:contact", "unknown field type `text`"),
            ("email:string:pii", "unknown data category `pii`"),
            ("email:string:contact:unique", "unknown option `unique`"),
            ("email:string:contact:", "unknown option ``"),
            (
                "email:string:contact:indexed:indexed",
                "`indexed` given twice",
            ),
            ("email:string:contact:mask=1", "mask must be"),
            ("email:string:contact:mask=1,", "mask must be"),
            ("email:string:contact:mask=-1,2", "mask must be"),
            ("email:string:contact:mask=a,b", "mask must be"),
            ("email:string:contact:mask=1,2,3", "mask must be"),
            ("email:string:contact:mask=99999999999,1", "mask must be"),
            (
                "email:string:contact:mask=1,2:mask=1,2",
                "`mask` given twice",
            ),
            (
                "age:int64:identity:mask=1,1",
                "only allowed on string fields",
            ),
        ];
        for (spec, expected) in cases {
            let err = spec.parse::<FieldSchema>().unwrap_err().to_string();
            assert!(err.contains(expected), "{spec:?}: {err}");
        }
        let long = format!("{}:string:other", "a".repeat(65));
        assert!(long.parse::<FieldSchema>().is_err());
        let max = format!("{}:string:other", "a".repeat(64));
        assert!(max.parse::<FieldSchema>().is_ok());
    }

    #[test]
    fn collection_json_schema_form() {
        let json = r#"{
            "name": "users",
            "description": "People",
            "fields": [
                {"name": "email", "type": "string", "category": "contact",
                 "indexed": true, "mask": {"keep_first": 1, "keep_last": 4}},
                {"name": "age", "field_type": "int64", "category": "identity"}
            ]
        }"#;
        let collection: Collection = serde_json::from_str(json).unwrap();
        assert_eq!(
            collection,
            Collection::new("users")
                .description("People")
                .field(
                    FieldSchema::new("email", FieldType::String, DataCategory::Contact)
                        .indexed()
                        .masked(1, 4)
                )
                .field(FieldSchema::new(
                    "age",
                    FieldType::Int64,
                    DataCategory::Identity
                ))
        );
        let back: Collection =
            serde_json::from_str(&serde_json::to_string(&collection).unwrap()).unwrap();
        assert_eq!(back, collection);
        assert!(serde_json::from_str::<Collection>(r#"{"fields": [], "colour": 1}"#).is_err());
        assert!(serde_json::from_str::<Collection>(
            r#"{"fields": [{"name": "a", "type": "text", "category": "other"}]}"#
        )
        .is_err());
    }

    #[test]
    fn rfc3339_parses_and_formats() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0, 0),
            ("2024-03-01T12:00:00Z", 1_709_294_400, 0),
            ("2024-02-29T23:59:59.5Z", 1_709_251_199, 500_000_000),
            ("1990-05-17", 642_902_400, 0),
            ("1969-12-31T23:59:59.999999999Z", -1, 999_999_999),
            ("1900-01-01T00:00:00Z", -2_208_988_800, 0),
            ("0001-01-01T00:00:00Z", -62_135_596_800, 0),
            ("9999-12-31T23:59:59Z", 253_402_300_799, 0),
            ("2024-03-01T13:30:00+01:30", 1_709_294_400, 0),
            ("2024-03-01t12:00:00-02:00", 1_709_301_600, 0),
            ("2024-03-01 12:00:00.000001z", 1_709_294_400, 1_000),
        ];
        for (text, seconds, nanos) in cases {
            let ts: Timestamp = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(ts, Timestamp { seconds, nanos }, "{text}");
        }
        assert_eq!(
            Timestamp::from_unix_seconds(0).to_string(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp {
                seconds: -1,
                nanos: 999_999_999
            }
            .to_string(),
            "1969-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            Timestamp {
                seconds: 1_709_251_199,
                nanos: 500_000_000
            }
            .to_string(),
            "2024-02-29T23:59:59.500Z"
        );
        assert_eq!(
            Timestamp {
                seconds: 0,
                nanos: 1_000
            }
            .to_string(),
            "1970-01-01T00:00:00.000001Z"
        );
        // Every day from year 1 to 9999 round-trips (sampled).
        let mut seconds = -62_135_596_800i64;
        while seconds < 253_402_300_799 {
            let ts = Timestamp {
                seconds,
                nanos: 123_000_000,
            };
            assert_eq!(ts.to_string().parse::<Timestamp>(), Ok(ts));
            seconds += 86_400 * 17 + 3_671;
        }
    }

    #[test]
    fn years_outside_rfc3339_read_back() {
        let cases = [
            (-62_135_596_801, 0, "0000-12-31T23:59:59Z"),
            (-62_167_219_201, 0, "-1-12-31T23:59:59Z"),
            (-70_000_000_000, 5_000, "-249-10-15T19:33:20.000005Z"),
            (253_402_300_800, 0, "+10000-01-01T00:00:00Z"),
            (
                i64::MAX,
                999_999_999,
                "+292277026596-12-04T15:30:07.999999999Z",
            ),
            (i64::MIN, 0, "-292277022657-01-27T08:29:52Z"),
        ];
        for (seconds, nanos, text) in cases {
            let ts = Timestamp { seconds, nanos };
            assert_eq!(ts.to_string(), text);
            assert_eq!(text.parse::<Timestamp>(), Ok(ts), "{text}");
        }
        assert_eq!(
            "+10000-01-01".parse::<Timestamp>(),
            Ok(Timestamp::from_unix_seconds(253_402_300_800))
        );
        // One second past either end of i64, and years too long to be one.
        for text in [
            "+292277026596-12-04T15:30:08Z",
            "-292277022657-01-27T08:29:51Z",
            "+1000000000000-01-01T00:00:00Z",
            "+-01-01T00:00:00Z",
            "+999999999999-01-01",
        ] {
            assert!(text.parse::<Timestamp>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn rfc3339_rejects_malformed() {
        for text in [
            "",
            "2024",
            "2024-3-01",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31",
            "2024-03-01T24:00:00Z",
            "2024-03-01T12:60:00Z",
            "2024-03-01T12:00:60Z",
            "2024-03-01T12:00:00",
            "2024-03-01T12:00Z",
            "2024-03-01T12:00:00.Z",
            "2024-03-01T12:00:00.1234567890Z",
            "2024-03-01T12:00:00+0100",
            "2024-03-01T12:00:00+24:00",
            "2024-03-01T12:00:00Zjunk",
            "1709294400",
        ] {
            assert!(text.parse::<Timestamp>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn timestamp_and_system_time() {
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        let ts = Timestamp::from(before);
        assert_eq!(
            ts,
            Timestamp {
                seconds: -2,
                nanos: 500_000_000
            }
        );
        assert_eq!(ts.to_system_time(), Some(before));
        let after = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
        assert_eq!(Timestamp::from(after).to_system_time(), Some(after));
        assert_eq!(
            Timestamp {
                seconds: 5,
                nanos: -1
            }
            .normalized(),
            Timestamp {
                seconds: 4,
                nanos: 999_999_999
            }
        );
        assert_eq!(
            Timestamp {
                seconds: 0,
                nanos: 2_500_000_000u32 as i32
            }
            .normalized()
            .seconds,
            -2
        );
    }

    #[test]
    fn value_conversions_and_display() {
        assert_eq!(Value::from("x"), Value::String("x".into()));
        assert_eq!(Value::from(String::from("x")), Value::String("x".into()));
        assert_eq!(Value::from(7i64), Value::Int64(7));
        assert_eq!(Value::from(7i32), Value::Int64(7));
        assert_eq!(Value::from(1.5), Value::Double(1.5));
        assert_eq!(Value::from(true), Value::Bool(true));
        assert_eq!(Value::from(vec![1u8, 2]), Value::Bytes(vec![1, 2]));
        assert_eq!(
            Value::from(UNIX_EPOCH),
            Value::Timestamp(Timestamp::from_unix_seconds(0))
        );
        assert_eq!(Value::Double(1.0).to_string(), "1.0");
        assert_eq!(Value::Bytes(b"hi".to_vec()).to_string(), "aGk=");
        assert_eq!(
            Value::Timestamp(Timestamp::from_unix_seconds(0)).to_string(),
            "1970-01-01T00:00:00Z"
        );
        for t in FieldType::ALL {
            let v = match t {
                FieldType::String => Value::from("s"),
                FieldType::Int64 => Value::from(1i64),
                FieldType::Double => Value::from(1.0),
                FieldType::Bool => Value::from(false),
                FieldType::Bytes => Value::from(vec![0u8]),
                FieldType::Timestamp => Value::from(Timestamp::default()),
            };
            assert_eq!(v.field_type(), t);
        }
    }

    #[test]
    fn record_builder() {
        let record = Record::new("users", "u1", "s1")
            .with("email", "a@b.eu")
            .with("age", 40i64);
        assert_eq!(record.collection, "users");
        assert_eq!(record.get("email"), Some(&Value::String("a@b.eu".into())));
        assert_eq!(record.fields.keys().collect::<Vec<_>>(), ["age", "email"]);
        assert!(record.redacted.is_empty());
        assert!(record.masked.is_empty());
    }

    /// A record as a policy-filtered read gives it.
    fn read_back() -> Record {
        let mut record = Record::new("users", "u1", "s1")
            .with("email", "a***@b.eu")
            .with("name", "Ada");
        record.redacted.insert("phone".into());
        record.masked.insert("email".into());
        record
    }

    #[test]
    fn redaction_and_masking_are_part_of_the_record() {
        let record = read_back();
        assert!(record.is_redacted("phone"));
        assert!(!record.is_redacted("email"));
        assert!(record.is_masked("email"));
        assert!(!record.is_masked("name"));
        assert_eq!(record.redacted.iter().collect::<Vec<_>>(), ["phone"]);
        // Equal records agree on what the policy did too.
        let whole = Record::new("users", "u1", "s1")
            .with("email", "a***@b.eu")
            .with("name", "Ada");
        assert_ne!(record, whole);
        assert_eq!(record, record.clone());

        // A value set by the caller is neither masked nor redacted.
        let mut record = read_back();
        record.set("email", "ada@b.eu");
        record.set("phone", "+33612345678");
        assert!(record.masked.is_empty() && record.redacted.is_empty());
        assert_eq!(
            record,
            Record::new("users", "u1", "s1")
                .with("email", "ada@b.eu")
                .with("name", "Ada")
                .with("phone", "+33612345678")
        );
    }

    #[test]
    fn debug_hides_values_and_ids() {
        let mut record = Record::new("users", "ada@example.eu", "person-ada")
            .with("email", "secret@example.eu")
            .with("age", 36i64)
            .with("photo", vec![0xde_u8, 0xad]);
        record.redacted.insert("phone".into());
        record.masked.insert("email".into());
        let shown = format!("{record:?}");
        for hidden in ["secret", "ada", "36", "222", "3q0"] {
            assert!(!shown.contains(hidden), "{hidden} in {shown}");
        }
        assert_eq!(
            shown,
            "Record { collection: \"users\", id: <14 bytes>, subject_id: <10 bytes>, \
             fields: {\"age\": int64, \"email\": string, \"photo\": bytes}, \
             redacted: {\"phone\"}, masked: {\"email\"} }"
        );
        let batch = BatchGet {
            records: vec![record],
            missing_ids: Vec::new(),
        };
        assert!(!format!("{batch:?}").contains("secret"));
    }
}
