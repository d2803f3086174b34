//! Conversions between the wire types (`vault_proto::v1`) and the engine's.
//! A message that does not convert is `INVALID_ARGUMENT`, never a panic.

use std::collections::BTreeMap;

use tonic::Status;
use vault_proto::v1 as pb;

use crate::engine::{shown, Collection, DataCategory, FieldSchema, FieldType, Mask, Record, Value};

pub fn field_type_from(v: i32, field: &str) -> Result<FieldType, Status> {
    Ok(match pb::FieldType::try_from(v) {
        Ok(pb::FieldType::String) => FieldType::String,
        Ok(pb::FieldType::Int64) => FieldType::Int64,
        Ok(pb::FieldType::Double) => FieldType::Double,
        Ok(pb::FieldType::Bool) => FieldType::Bool,
        Ok(pb::FieldType::Bytes) => FieldType::Bytes,
        Ok(pb::FieldType::Timestamp) => FieldType::Timestamp,
        Ok(pb::FieldType::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "field {}: type is missing or unknown",
                shown(field)
            )))
        }
    })
}

fn field_type_to(t: FieldType) -> pb::FieldType {
    match t {
        FieldType::String => pb::FieldType::String,
        FieldType::Int64 => pb::FieldType::Int64,
        FieldType::Double => pb::FieldType::Double,
        FieldType::Bool => pb::FieldType::Bool,
        FieldType::Bytes => pb::FieldType::Bytes,
        FieldType::Timestamp => pb::FieldType::Timestamp,
    }
}

fn category_from(v: i32, field: &str) -> Result<DataCategory, Status> {
    Ok(match pb::DataCategory::try_from(v) {
        Ok(pb::DataCategory::Identity) => DataCategory::Identity,
        Ok(pb::DataCategory::Contact) => DataCategory::Contact,
        Ok(pb::DataCategory::Financial) => DataCategory::Financial,
        Ok(pb::DataCategory::Location) => DataCategory::Location,
        Ok(pb::DataCategory::Special) => DataCategory::Special,
        Ok(pb::DataCategory::Behavioural) => DataCategory::Behavioural,
        Ok(pb::DataCategory::Other) => DataCategory::Other,
        Ok(pb::DataCategory::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "field {}: data category is missing or unknown",
                shown(field)
            )))
        }
    })
}

fn category_to(c: DataCategory) -> pb::DataCategory {
    match c {
        DataCategory::Identity => pb::DataCategory::Identity,
        DataCategory::Contact => pb::DataCategory::Contact,
        DataCategory::Financial => pb::DataCategory::Financial,
        DataCategory::Location => pb::DataCategory::Location,
        DataCategory::Special => pb::DataCategory::Special,
        DataCategory::Behavioural => pb::DataCategory::Behavioural,
        DataCategory::Other => pb::DataCategory::Other,
    }
}

pub fn collection_from(c: pb::Collection) -> Result<Collection, Status> {
    let fields = c
        .fields
        .into_iter()
        .map(|f| {
            Ok(FieldSchema {
                field_type: field_type_from(f.r#type, &f.name)?,
                category: category_from(f.category, &f.name)?,
                indexed: f.indexed,
                mask: f.mask.map(|m| Mask {
                    keep_first: m.keep_first,
                    keep_last: m.keep_last,
                }),
                name: f.name,
            })
        })
        .collect::<Result<_, Status>>()?;
    Ok(Collection {
        name: c.name,
        region: c.region,
        description: c.description,
        fields,
        retention: c.retention.map(|r| crate::engine::Retention {
            ttl_seconds: r.ttl_seconds,
            grace_seconds: r.grace_seconds,
        }),
    })
}

pub fn collection_to(c: &Collection) -> pb::Collection {
    pb::Collection {
        name: c.name.clone(),
        region: c.region.clone(),
        description: c.description.clone(),
        retention: c.retention.map(|r| pb::Retention {
            ttl_seconds: r.ttl_seconds,
            grace_seconds: r.grace_seconds,
        }),
        fields: c
            .fields
            .iter()
            .map(|f| pb::FieldSchema {
                name: f.name.clone(),
                r#type: field_type_to(f.field_type) as i32,
                category: category_to(f.category) as i32,
                indexed: f.indexed,
                mask: f.mask.map(|m| pb::Mask {
                    keep_first: m.keep_first,
                    keep_last: m.keep_last,
                }),
            })
            .collect(),
    }
}

/// A value from the wire (`field` names it in errors).
pub fn value_from(v: pb::Value, field: &str) -> Result<Value, Status> {
    use pb::value::Kind;
    Ok(match v.kind {
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::Int64Value(i)) => Value::Int64(i),
        Some(Kind::DoubleValue(d)) => Value::Double(d),
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::BytesValue(b)) => Value::Bytes(b),
        Some(Kind::TimestampValue(t)) => Value::Timestamp {
            seconds: t.seconds,
            nanos: t.nanos,
        },
        None => {
            return Err(Status::invalid_argument(format!(
                "field {}: value has no type set",
                shown(field)
            )))
        }
    })
}

/// Moves a string or bytes value into the message, no copy: what is left
/// in `v` (wiped on drop) is empty, and the message is then the only holder
/// of that plaintext. Neither it nor tonic's encode buffer is wiped once
/// the response is sent: prost messages and `bytes` buffers have no wipe,
/// and closing that would take a custom codec.
fn value_to(mut v: Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match &mut v {
        Value::String(s) => Kind::StringValue(std::mem::take(s)),
        Value::Int64(i) => Kind::Int64Value(*i),
        Value::Double(d) => Kind::DoubleValue(*d),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Bytes(b) => Kind::BytesValue(std::mem::take(b)),
        Value::Timestamp { seconds, nanos } => Kind::TimestampValue(prost_types::Timestamp {
            seconds: *seconds,
            nanos: *nanos,
        }),
    };
    pb::Value { kind: Some(kind) }
}

pub fn record_from(r: pb::Record) -> Result<Record, Status> {
    let fields = r
        .fields
        .into_iter()
        .map(|(name, v)| {
            let value = value_from(v, &name)?;
            Ok((name, value))
        })
        .collect::<Result<BTreeMap<_, _>, Status>>()?;
    Ok(Record::new(r.collection, r.id, r.subject_id, fields))
}

pub fn record_to(r: Record) -> pb::Record {
    pb::Record {
        collection: r.collection,
        id: r.id,
        subject_id: r.subject_id,
        fields: r
            .fields
            .into_iter()
            .map(|(k, v)| (k, value_to(v)))
            .collect(),
        redacted_fields: r.redacted.into_iter().collect(),
        masked_fields: r.masked.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_enums_and_empty_values_are_refused() {
        let c = pb::Collection {
            name: "c".into(),
            fields: vec![pb::FieldSchema {
                name: "f".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            collection_from(c).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut fields = std::collections::HashMap::new();
        fields.insert("f".to_string(), pb::Value { kind: None });
        let r = pb::Record {
            fields,
            ..Default::default()
        };
        assert_eq!(
            record_from(r).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(field_type_from(99, "f").is_err());
    }

    #[test]
    fn collection_round_trip() {
        let c = Collection {
            name: "users".into(),
            region: "eu".into(),
            description: "d".into(),
            fields: vec![FieldSchema {
                name: "phone".into(),
                field_type: FieldType::String,
                category: DataCategory::Contact,
                indexed: true,
                mask: Some(Mask {
                    keep_first: 0,
                    keep_last: 4,
                }),
            }],
            retention: Some(crate::engine::Retention {
                ttl_seconds: 86_400,
                grace_seconds: 3_600,
            }),
        };
        assert_eq!(collection_from(collection_to(&c)).unwrap(), c);
    }
}
