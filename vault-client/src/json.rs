//! JSON for records: typing JSON input by a collection's schema, and showing
//! values and records as JSON.
//!
//! Input, by field type: `string` from a JSON string; `int64` from a JSON
//! integer in the signed 64-bit range; `double` from any JSON number; `bool`
//! from `true`/`false`; `bytes` from a standard base64 string (padding
//! optional); `timestamp` from an RFC 3339 string (or a bare date, taken as
//! midnight UTC) or an integer of Unix seconds. A mismatch names the field
//! and the expected type but never repeats the value, which may be personal
//! data.
//!
//! Output: strings, integers, booleans as themselves; doubles as numbers
//! (non-finite ones as the strings `NaN`, `inf`, `-inf`); bytes as standard
//! base64; timestamps as RFC 3339 in UTC (a year outside 0000–9999 with a
//! sign, as in `+10000-01-01T00:00:00Z`, which reads back as input too).

use std::collections::BTreeMap;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{Map, Number, Value as Json};

use crate::types::{Collection, FieldType, Record, Timestamp, Value};

/// Standard base64 that accepts input with or without padding.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why JSON input could not become record fields. The messages never contain
/// the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The record data is not a JSON object.
    #[error("the record data must be a JSON object of field names to values, not {got}")]
    NotAnObject {
        /// What it was instead (`an array`, `a string`, ...).
        got: &'static str,
    },
    /// A field name that the collection's schema lacks.
    #[error(
        "field `{field}` is not in the schema of collection `{collection}` (its fields: {known})"
    )]
    UnknownField {
        /// The collection.
        collection: String,
        /// The unknown field name.
        field: String,
        /// The schema's field names, comma-separated.
        known: String,
    },
    /// A value that does not fit its field's type.
    #[error("field `{field}`: expected {expected}, got {got}")]
    TypeMismatch {
        /// The field name.
        field: String,
        /// The expected type, in words (`an int64 (a JSON integer)`, ...).
        expected: &'static str,
        /// What was given instead, in words, without the value.
        got: &'static str,
    },
}

/// The expected input of a field type, in words.
fn expected(field_type: FieldType) -> &'static str {
    match field_type {
        FieldType::String => "a string",
        FieldType::Int64 => "an int64 (a JSON integer)",
        FieldType::Double => "a double (a JSON number)",
        FieldType::Bool => "a bool (true or false)",
        FieldType::Bytes => "bytes (a base64 string)",
        FieldType::Timestamp => {
            "a timestamp (an RFC 3339 string such as 2024-03-01T12:00:00Z, or integer Unix seconds)"
        }
    }
}

/// What a JSON value is, in words, without its content.
fn describe(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Types one JSON value as a value of `field_type`; `field` names it in
/// errors.
pub fn value_from_json(
    field: &str,
    field_type: FieldType,
    json: &Json,
) -> Result<Value, JsonError> {
    let mismatch = |got: &'static str| JsonError::TypeMismatch {
        field: field.to_owned(),
        expected: expected(field_type),
        got,
    };
    match (field_type, json) {
        (FieldType::String, Json::String(s)) => Ok(Value::String(s.clone())),
        (FieldType::Int64, Json::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Value::Int64(i)),
            None if n.is_f64() => Err(mismatch("a number with a fraction or exponent")),
            None => Err(mismatch("an integer outside the int64 range")),
        },
        (FieldType::Double, Json::Number(n)) => n
            .as_f64()
            .map(Value::Double)
            .ok_or_else(|| mismatch("a number that is not a double")),
        (FieldType::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (FieldType::Bytes, Json::String(s)) => BASE64_LENIENT
            .decode(s.trim())
            .map(Value::Bytes)
            .map_err(|_| mismatch("a string that is not valid base64")),
        (FieldType::Timestamp, Json::String(s)) => Timestamp::parse_rfc3339(s)
            .map(Value::Timestamp)
            .map_err(|_| mismatch("a string that is not an RFC 3339 timestamp")),
        (FieldType::Timestamp, Json::Number(n)) => match n.as_i64() {
            Some(seconds) => Ok(Value::Timestamp(Timestamp::from_unix_seconds(seconds))),
            None if n.is_f64() => Err(mismatch("a number with a fraction or exponent")),
            None => Err(mismatch("an integer outside the int64 range")),
        },
        (_, other) => Err(mismatch(describe(other))),
    }
}

/// Types a JSON object of field names to values by `collection`'s schema.
pub fn fields_from_json(
    collection: &Collection,
    data: &Json,
) -> Result<BTreeMap<String, Value>, JsonError> {
    let Json::Object(object) = data else {
        return Err(JsonError::NotAnObject {
            got: describe(data),
        });
    };
    object
        .iter()
        .map(|(name, json)| {
            let schema = collection
                .field_schema(name)
                .ok_or_else(|| JsonError::UnknownField {
                    collection: collection.name.clone(),
                    field: name.clone(),
                    known: collection
                        .fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            Ok((
                name.clone(),
                value_from_json(name, schema.field_type, json)?,
            ))
        })
        .collect()
}

/// Shows a value as JSON (see the module docs).
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::String(s) => Json::String(s.clone()),
        Value::Int64(n) => Json::Number(Number::from(*n)),
        Value::Double(x) => match Number::from_f64(*x) {
            Some(n) => Json::Number(n),
            None if x.is_nan() => Json::String("NaN".into()),
            None if *x > 0.0 => Json::String("inf".into()),
            None => Json::String("-inf".into()),
        },
        Value::Bool(b) => Json::Bool(*b),
        Value::Bytes(bytes) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Value::Timestamp(ts) => Json::String(ts.to_rfc3339()),
    }
}

/// Shows a record as the JSON object
/// `{"collection", "id", "subject_id", "fields": {name: value, ...}}`, with
/// `"redacted": [name, ...]` and `"masked": [name, ...]` (sorted by name)
/// when the caller's policy withheld or masked fields
/// ([`Record::redacted`], [`Record::masked`]). Each of the two keys is
/// present only when its list is not empty, so a record the policy left
/// whole shows as it always has.
pub fn record_to_json(record: &Record) -> Json {
    let fields: Map<String, Json> = record
        .fields
        .iter()
        .map(|(name, value)| (name.clone(), value_to_json(value)))
        .collect();
    let mut object = Map::new();
    object.insert("collection".into(), Json::String(record.collection.clone()));
    object.insert("id".into(), Json::String(record.id.clone()));
    object.insert("subject_id".into(), Json::String(record.subject_id.clone()));
    object.insert("fields".into(), Json::Object(fields));
    for (key, names) in [("redacted", &record.redacted), ("masked", &record.masked)] {
        if !names.is_empty() {
            let names = names.iter().map(|n| Json::String(n.clone())).collect();
            object.insert(key.into(), Json::Array(names));
        }
    }
    Json::Object(object)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::types::{DataCategory, FieldSchema};

    fn typed(field_type: FieldType, json: Json) -> Result<Value, JsonError> {
        value_from_json("f", field_type, &json)
    }

    fn mismatch(field_type: FieldType, json: Json) -> String {
        let err = typed(field_type, json).unwrap_err();
        assert!(matches!(err, JsonError::TypeMismatch { .. }), "{err:?}");
        err.to_string()
    }

    #[test]
    fn strings() {
        assert_eq!(
            typed(FieldType::String, json!("a@b.eu")),
            Ok(Value::from("a@b.eu"))
        );
        assert_eq!(typed(FieldType::String, json!("")), Ok(Value::from("")));
        let err = mismatch(FieldType::String, json!(42));
        assert_eq!(err, "field `f`: expected a string, got a number");
        assert!(mismatch(FieldType::String, json!(null)).contains("got null"));
        assert!(mismatch(FieldType::String, json!(["x"])).contains("got an array"));
        assert!(mismatch(FieldType::String, json!({"a": 1})).contains("got an object"));
    }

    #[test]
    fn int64s() {
        assert_eq!(typed(FieldType::Int64, json!(42)), Ok(Value::Int64(42)));
        assert_eq!(typed(FieldType::Int64, json!(-7)), Ok(Value::Int64(-7)));
        assert_eq!(
            typed(FieldType::Int64, json!(i64::MIN)),
            Ok(Value::Int64(i64::MIN))
        );
        assert!(mismatch(FieldType::Int64, json!(1.5))
            .contains("got a number with a fraction or exponent"));
        assert!(mismatch(FieldType::Int64, json!(2.0))
            .contains("got a number with a fraction or exponent"));
        assert!(mismatch(FieldType::Int64, json!(u64::MAX)).contains("outside the int64 range"));
        let err = mismatch(FieldType::Int64, json!("42"));
        assert_eq!(
            err,
            "field `f`: expected an int64 (a JSON integer), got a string"
        );
    }

    #[test]
    fn doubles() {
        assert_eq!(
            typed(FieldType::Double, json!(0.25)),
            Ok(Value::Double(0.25))
        );
        assert_eq!(typed(FieldType::Double, json!(3)), Ok(Value::Double(3.0)));
        assert_eq!(typed(FieldType::Double, json!(-3)), Ok(Value::Double(-3.0)));
        assert!(mismatch(FieldType::Double, json!("0.25")).contains("expected a double"));
        assert!(mismatch(FieldType::Double, json!(true)).contains("got a boolean"));
    }

    #[test]
    fn bools() {
        assert_eq!(typed(FieldType::Bool, json!(true)), Ok(Value::Bool(true)));
        assert_eq!(typed(FieldType::Bool, json!(false)), Ok(Value::Bool(false)));
        assert!(mismatch(FieldType::Bool, json!(1)).contains("expected a bool"));
        assert!(mismatch(FieldType::Bool, json!("true")).contains("got a string"));
    }

    #[test]
    fn bytes() {
        assert_eq!(
            typed(FieldType::Bytes, json!("aGk=")),
            Ok(Value::Bytes(b"hi".to_vec()))
        );
        assert_eq!(
            typed(FieldType::Bytes, json!("aGk")),
            Ok(Value::Bytes(b"hi".to_vec()))
        );
        assert_eq!(
            typed(FieldType::Bytes, json!("")),
            Ok(Value::Bytes(Vec::new()))
        );
        let err = mismatch(FieldType::Bytes, json!("secret value!"));
        assert_eq!(
            err,
            "field `f`: expected bytes (a base64 string), got a string that is not valid base64"
        );
        assert!(!err.contains("secret"));
        assert!(mismatch(FieldType::Bytes, json!([1, 2])).contains("got an array"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            typed(FieldType::Timestamp, json!("2024-03-01T12:00:00Z")),
            Ok(Value::Timestamp(Timestamp::from_unix_seconds(
                1_709_294_400
            )))
        );
        assert_eq!(
            typed(FieldType::Timestamp, json!("1990-05-17")),
            Ok(Value::Timestamp(Timestamp::from_unix_seconds(642_902_400)))
        );
        assert_eq!(
            typed(FieldType::Timestamp, json!(1_709_294_400)),
            Ok(Value::Timestamp(Timestamp::from_unix_seconds(
                1_709_294_400
            )))
        );
        assert_eq!(
            typed(FieldType::Timestamp, json!(-86_400)),
            Ok(Value::Timestamp(Timestamp::from_unix_seconds(-86_400)))
        );
        let err = mismatch(FieldType::Timestamp, json!("17/05/1990"));
        assert!(err.contains("expected a timestamp"), "{err}");
        assert!(err.contains("not an RFC 3339 timestamp"), "{err}");
        assert!(!err.contains("1990"), "{err}");
        assert!(mismatch(FieldType::Timestamp, json!(1.5)).contains("with a fraction"));
        assert!(mismatch(FieldType::Timestamp, json!(true)).contains("got a boolean"));
    }

    fn users() -> Collection {
        Collection::new("users")
            .field(FieldSchema::new(
                "email",
                FieldType::String,
                DataCategory::Contact,
            ))
            .field(FieldSchema::new(
                "age",
                FieldType::Int64,
                DataCategory::Identity,
            ))
            .field(FieldSchema::new(
                "birth_date",
                FieldType::Timestamp,
                DataCategory::Identity,
            ))
    }

    #[test]
    fn objects_by_schema() {
        let fields = fields_from_json(
            &users(),
            &json!({"email": "a@b.eu", "age": 40, "birth_date": "1990-05-17T00:00:00Z"}),
        )
        .unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields["age"], Value::Int64(40));
        assert_eq!(fields_from_json(&users(), &json!({})).unwrap().len(), 0);

        let err =
            fields_from_json(&users(), &json!({"email": "a@b.eu", "age": "forty"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `age`: expected an int64 (a JSON integer), got a string"
        );
        let err = fields_from_json(&users(), &json!({"emial": "a@b.eu"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `emial` is not in the schema of collection `users` (its fields: email, age, birth_date)"
        );
        let err = fields_from_json(&users(), &json!(["a@b.eu"])).unwrap_err();
        assert!(matches!(err, JsonError::NotAnObject { got: "an array" }));
    }

    #[test]
    fn output() {
        assert_eq!(value_to_json(&Value::from("x")), json!("x"));
        assert_eq!(value_to_json(&Value::from(-3i64)), json!(-3));
        assert_eq!(value_to_json(&Value::from(0.5)), json!(0.5));
        assert_eq!(value_to_json(&Value::Double(f64::NAN)), json!("NaN"));
        assert_eq!(
            value_to_json(&Value::Double(f64::NEG_INFINITY)),
            json!("-inf")
        );
        assert_eq!(value_to_json(&Value::from(true)), json!(true));
        assert_eq!(value_to_json(&Value::from(b"hi".to_vec())), json!("aGk="));
        assert_eq!(
            value_to_json(&Value::from(Timestamp::from_unix_seconds(642_902_400))),
            json!("1990-05-17T00:00:00Z")
        );
        let record = Record::new("users", "u1", "s1")
            .with("email", "a@b.eu")
            .with("photo", vec![0u8, 255]);
        assert_eq!(
            record_to_json(&record),
            json!({
                "collection": "users",
                "id": "u1",
                "subject_id": "s1",
                "fields": {"email": "a@b.eu", "photo": "AP8="}
            })
        );
    }

    #[test]
    fn output_names_redacted_and_masked_fields() {
        let mut record = Record::new("users", "u1", "s1")
            .with("email", "a***@b.eu")
            .with("name", "Ada");
        record.redacted.insert("phone".into());
        record.redacted.insert("birth_date".into());
        record.masked.insert("email".into());
        assert_eq!(
            record_to_json(&record),
            json!({
                "collection": "users",
                "id": "u1",
                "subject_id": "s1",
                "fields": {"email": "a***@b.eu", "name": "Ada"},
                "redacted": ["birth_date", "phone"],
                "masked": ["email"]
            })
        );
        // Each key only when its list is not empty.
        record.masked.clear();
        let json = record_to_json(&record);
        assert_eq!(json["redacted"], json!(["birth_date", "phone"]));
        assert!(json.get("masked").is_none(), "{json}");
        let mut record = Record::new("users", "u1", "s1").with("email", "a***@b.eu");
        record.masked.insert("email".into());
        let json = record_to_json(&record);
        assert_eq!(json["masked"], json!(["email"]));
        assert!(json.get("redacted").is_none(), "{json}");
    }

    #[test]
    fn output_reads_back_as_input() {
        let schema = Collection::new("all")
            .field(FieldSchema::new(
                "s",
                FieldType::String,
                DataCategory::Other,
            ))
            .field(FieldSchema::new("i", FieldType::Int64, DataCategory::Other))
            .field(FieldSchema::new(
                "d",
                FieldType::Double,
                DataCategory::Other,
            ))
            .field(FieldSchema::new("b", FieldType::Bool, DataCategory::Other))
            .field(FieldSchema::new("y", FieldType::Bytes, DataCategory::Other))
            .field(FieldSchema::new(
                "t",
                FieldType::Timestamp,
                DataCategory::Other,
            ));
        let record = Record::new("all", "1", "s")
            .with("s", "text")
            .with("i", i64::MAX)
            .with("d", -0.125)
            .with("b", true)
            .with("y", vec![1u8, 2, 3, 4])
            .with(
                "t",
                Timestamp {
                    seconds: -1,
                    nanos: 5_000,
                },
            );
        let json = record_to_json(&record);
        let fields = fields_from_json(&schema, &json["fields"]).unwrap();
        assert_eq!(fields, record.fields);
    }
}
