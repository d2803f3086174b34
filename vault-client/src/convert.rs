//! Conversions between this crate's types and the wire types of `vault.v1`.
//!
//! Towards the wire every conversion is total. From the wire, anything that
//! breaks the contract (a value with no variant set, an unspecified or unknown
//! enum, an out-of-range timestamp, a missing message) is an
//! [`Error::Protocol`], never a panic.

use std::collections::{BTreeMap, BTreeSet};

use vault_proto::v1 as pb;

use crate::custody::{
    Initialized, KeyState, ReindexProgress, RekeyProgress, RewrapProgress, RootKeyInfo, RootKeys,
    SealStatus, SubjectKeyRotation, UnsealProgress, UnsealShare,
};
use crate::error::Error;
use crate::policy::{FieldAccess, OperationAccess, PolicyCheck};
use crate::receipt::ErasureReceipt;
use crate::types::{
    Collection, DataCategory, FieldSchema, FieldType, Mask, Record, Timestamp, Value,
};

impl From<Timestamp> for prost_types::Timestamp {
    fn from(ts: Timestamp) -> Self {
        let ts = ts.normalized();
        prost_types::Timestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        }
    }
}

impl TryFrom<prost_types::Timestamp> for Timestamp {
    type Error = Error;

    /// Refuses nanoseconds outside `0..=999_999_999`, which the
    /// `google.protobuf.Timestamp` contract forbids.
    fn try_from(ts: prost_types::Timestamp) -> Result<Self, Error> {
        if !(0..1_000_000_000).contains(&ts.nanos) {
            return Err(Error::Protocol(format!(
                "timestamp nanos {} out of range 0..=999999999",
                ts.nanos
            )));
        }
        Ok(Timestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        })
    }
}

impl From<Value> for pb::Value {
    fn from(value: Value) -> Self {
        use pb::value::Kind;
        let kind = match value {
            Value::String(s) => Kind::StringValue(s),
            Value::Int64(n) => Kind::Int64Value(n),
            Value::Double(x) => Kind::DoubleValue(x),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Bytes(bytes) => Kind::BytesValue(bytes),
            Value::Timestamp(ts) => Kind::TimestampValue(ts.into()),
        };
        pb::Value { kind: Some(kind) }
    }
}

impl From<&Value> for pb::Value {
    fn from(value: &Value) -> Self {
        value.clone().into()
    }
}

impl TryFrom<pb::Value> for Value {
    type Error = Error;

    /// Refuses a value with no variant set.
    fn try_from(value: pb::Value) -> Result<Self, Error> {
        use pb::value::Kind;
        Ok(match value.kind {
            Some(Kind::StringValue(s)) => Value::String(s),
            Some(Kind::Int64Value(n)) => Value::Int64(n),
            Some(Kind::DoubleValue(x)) => Value::Double(x),
            Some(Kind::BoolValue(b)) => Value::Bool(b),
            Some(Kind::BytesValue(bytes)) => Value::Bytes(bytes),
            Some(Kind::TimestampValue(ts)) => Value::Timestamp(ts.try_into()?),
            None => return Err(Error::Protocol("value has no variant set".into())),
        })
    }
}

impl From<FieldType> for pb::FieldType {
    fn from(field_type: FieldType) -> Self {
        match field_type {
            FieldType::String => pb::FieldType::String,
            FieldType::Int64 => pb::FieldType::Int64,
            FieldType::Double => pb::FieldType::Double,
            FieldType::Bool => pb::FieldType::Bool,
            FieldType::Bytes => pb::FieldType::Bytes,
            FieldType::Timestamp => pb::FieldType::Timestamp,
        }
    }
}

impl TryFrom<pb::FieldType> for FieldType {
    type Error = Error;

    /// Refuses `FIELD_TYPE_UNSPECIFIED`.
    fn try_from(field_type: pb::FieldType) -> Result<Self, Error> {
        Ok(match field_type {
            pb::FieldType::String => FieldType::String,
            pb::FieldType::Int64 => FieldType::Int64,
            pb::FieldType::Double => FieldType::Double,
            pb::FieldType::Bool => FieldType::Bool,
            pb::FieldType::Bytes => FieldType::Bytes,
            pb::FieldType::Timestamp => FieldType::Timestamp,
            pb::FieldType::Unspecified => {
                return Err(Error::Protocol("field type is unspecified".into()))
            }
        })
    }
}

impl From<DataCategory> for pb::DataCategory {
    fn from(category: DataCategory) -> Self {
        match category {
            DataCategory::Identity => pb::DataCategory::Identity,
            DataCategory::Contact => pb::DataCategory::Contact,
            DataCategory::Financial => pb::DataCategory::Financial,
            DataCategory::Location => pb::DataCategory::Location,
            DataCategory::Special => pb::DataCategory::Special,
            DataCategory::Behavioural => pb::DataCategory::Behavioural,
            DataCategory::Other => pb::DataCategory::Other,
        }
    }
}

impl TryFrom<pb::DataCategory> for DataCategory {
    type Error = Error;

    /// Refuses `DATA_CATEGORY_UNSPECIFIED`.
    fn try_from(category: pb::DataCategory) -> Result<Self, Error> {
        Ok(match category {
            pb::DataCategory::Identity => DataCategory::Identity,
            pb::DataCategory::Contact => DataCategory::Contact,
            pb::DataCategory::Financial => DataCategory::Financial,
            pb::DataCategory::Location => DataCategory::Location,
            pb::DataCategory::Special => DataCategory::Special,
            pb::DataCategory::Behavioural => DataCategory::Behavioural,
            pb::DataCategory::Other => DataCategory::Other,
            pb::DataCategory::Unspecified => {
                return Err(Error::Protocol("data category is unspecified".into()))
            }
        })
    }
}

impl From<Mask> for pb::Mask {
    fn from(mask: Mask) -> Self {
        pb::Mask {
            keep_first: mask.keep_first,
            keep_last: mask.keep_last,
        }
    }
}

impl From<pb::Mask> for Mask {
    fn from(mask: pb::Mask) -> Self {
        Mask {
            keep_first: mask.keep_first,
            keep_last: mask.keep_last,
        }
    }
}

impl From<FieldSchema> for pb::FieldSchema {
    fn from(field: FieldSchema) -> Self {
        pb::FieldSchema {
            name: field.name,
            r#type: pb::FieldType::from(field.field_type).into(),
            category: pb::DataCategory::from(field.category).into(),
            indexed: field.indexed,
            mask: field.mask.map(Into::into),
        }
    }
}

impl TryFrom<pb::FieldSchema> for FieldSchema {
    type Error = Error;

    /// Refuses an unspecified or unknown type or category.
    fn try_from(field: pb::FieldSchema) -> Result<Self, Error> {
        let field_type = pb::FieldType::try_from(field.r#type)
            .ok()
            .and_then(|t| FieldType::try_from(t).ok())
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "field `{}` has an unspecified or unknown type ({})",
                    field.name, field.r#type
                ))
            })?;
        let category = pb::DataCategory::try_from(field.category)
            .ok()
            .and_then(|c| DataCategory::try_from(c).ok())
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "field `{}` has an unspecified or unknown category ({})",
                    field.name, field.category
                ))
            })?;
        Ok(FieldSchema {
            name: field.name,
            field_type,
            category,
            indexed: field.indexed,
            mask: field.mask.map(Into::into),
        })
    }
}

impl From<Collection> for pb::Collection {
    fn from(collection: Collection) -> Self {
        pb::Collection {
            name: collection.name,
            region: collection.region,
            fields: collection.fields.into_iter().map(Into::into).collect(),
            description: collection.description,
            retention: collection.retention.map(|r| pb::Retention {
                ttl_seconds: r.ttl_seconds,
                grace_seconds: r.grace_seconds,
            }),
        }
    }
}

impl From<&Collection> for pb::Collection {
    fn from(collection: &Collection) -> Self {
        collection.clone().into()
    }
}

impl TryFrom<pb::Collection> for Collection {
    type Error = Error;

    /// Refuses a collection with an invalid field schema.
    fn try_from(collection: pb::Collection) -> Result<Self, Error> {
        let name = collection.name;
        let fields = collection
            .fields
            .into_iter()
            .map(FieldSchema::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                Error::Protocol(message) => {
                    Error::Protocol(format!("collection `{name}`: {message}"))
                }
                other => other,
            })?;
        Ok(Collection {
            name,
            region: collection.region,
            description: collection.description,
            fields,
            retention: collection.retention.map(|r| crate::types::Retention {
                ttl_seconds: r.ttl_seconds,
                grace_seconds: r.grace_seconds,
            }),
        })
    }
}

impl From<Record> for pb::Record {
    fn from(record: Record) -> Self {
        pb::Record {
            collection: record.collection,
            id: record.id,
            subject_id: record.subject_id,
            fields: record
                .fields
                .into_iter()
                .map(|(name, value)| (name, value.into()))
                .collect(),
            redacted_fields: Vec::new(),
            masked_fields: Vec::new(),
        }
    }
}

impl From<&Record> for pb::Record {
    fn from(record: &Record) -> Self {
        pb::Record {
            collection: record.collection.clone(),
            id: record.id.clone(),
            subject_id: record.subject_id.clone(),
            fields: record
                .fields
                .iter()
                .map(|(name, value)| (name.clone(), value.into()))
                .collect(),
            redacted_fields: Vec::new(),
            masked_fields: Vec::new(),
        }
    }
}

impl TryFrom<pb::Record> for Record {
    type Error = Error;

    /// Refuses a record with a value that has no variant set, a redacted
    /// field that has a value, and a masked field that has none.
    fn try_from(record: pb::Record) -> Result<Self, Error> {
        let pb::Record {
            collection,
            id,
            subject_id,
            fields,
            redacted_fields,
            masked_fields,
        } = record;
        let broken = |name: &str, message: &str| {
            Error::Protocol(format!(
                "record `{collection}/{id}` field `{name}`: {message}"
            ))
        };
        let fields: BTreeMap<String, Value> = fields
            .into_iter()
            .map(|(name, value)| match Value::try_from(value) {
                Ok(value) => Ok((name, value)),
                Err(Error::Protocol(message)) => Err(broken(&name, &message)),
                Err(other) => Err(other),
            })
            .collect::<Result<_, _>>()?;
        let redacted: BTreeSet<String> = redacted_fields.into_iter().collect();
        if let Some(name) = redacted.iter().find(|name| fields.contains_key(*name)) {
            return Err(broken(name, "marked redacted, yet it has a value"));
        }
        let masked: BTreeSet<String> = masked_fields.into_iter().collect();
        if let Some(name) = masked.iter().find(|name| !fields.contains_key(*name)) {
            return Err(broken(name, "marked masked, yet it has no value"));
        }
        Ok(Record {
            collection,
            id,
            subject_id,
            fields,
            redacted,
            masked,
        })
    }
}

impl From<pb::InitResponse> for Initialized {
    /// Moves each share's text into its zeroizing holder, without a copy.
    fn from(response: pb::InitResponse) -> Self {
        Initialized {
            region: response.region,
            threshold: response.threshold,
            shares: response.shares.into_iter().map(UnsealShare::new).collect(),
            encrypted_shares: response.encrypted_shares,
        }
    }
}

impl From<pb::RekeyResponse> for RekeyProgress {
    /// Moves each new share's text into its zeroizing holder.
    fn from(response: pb::RekeyResponse) -> Self {
        RekeyProgress {
            complete: response.complete,
            progress: response.progress,
            required: response.required,
            shares: response.shares.into_iter().map(UnsealShare::new).collect(),
            encrypted_shares: response.encrypted_shares,
            threshold: response.threshold,
            share_count: response.share_count,
            keyring_generation: response.keyring_generation,
            sealed: response.sealed,
        }
    }
}

impl From<pb::UnsealResponse> for UnsealProgress {
    fn from(response: pb::UnsealResponse) -> Self {
        UnsealProgress {
            sealed: response.sealed,
            progress: response.progress,
            threshold: response.threshold,
        }
    }
}

impl TryFrom<i32> for KeyState {
    type Error = Error;

    /// Refuses `KEY_STATE_UNSPECIFIED` and unknown states.
    fn try_from(state: i32) -> Result<Self, Error> {
        match pb::KeyState::try_from(state) {
            Ok(pb::KeyState::Active) => Ok(KeyState::Active),
            Ok(pb::KeyState::Retired) => Ok(KeyState::Retired),
            Ok(pb::KeyState::Destroyed) => Ok(KeyState::Destroyed),
            Ok(pb::KeyState::Unspecified) | Err(_) => Err(Error::Protocol(format!(
                "unspecified or unknown key state ({state})"
            ))),
        }
    }
}

impl TryFrom<pb::RootKeyVersion> for RootKeyInfo {
    type Error = Error;

    /// Refuses an unspecified or unknown state.
    fn try_from(key: pb::RootKeyVersion) -> Result<Self, Error> {
        let state = KeyState::try_from(key.state).map_err(|e| match e {
            Error::Protocol(message) => {
                Error::Protocol(format!("root key version {}: {message}", key.version))
            }
            other => other,
        })?;
        Ok(RootKeyInfo {
            version: key.version,
            state,
            current: key.current,
            wrapped_subject_keys: key.wrapped_subject_keys,
            wraps: key.wraps,
        })
    }
}

impl TryFrom<pb::StatusResponse> for SealStatus {
    type Error = Error;

    /// Refuses a bad root key version and a signing key that is neither
    /// empty nor 32 bytes.
    fn try_from(status: pb::StatusResponse) -> Result<Self, Error> {
        let signing_public_key = match status.signing_public_key.len() {
            0 => None,
            _ => Some(
                <[u8; 32]>::try_from(status.signing_public_key.as_slice()).map_err(|_| {
                    Error::Protocol(format!(
                        "the signing public key has {} bytes, not 32",
                        status.signing_public_key.len()
                    ))
                })?,
            ),
        };
        Ok(SealStatus {
            initialized: status.initialized,
            sealed: status.sealed,
            region: status.region,
            threshold: status.threshold,
            shares: status.shares,
            progress: status.progress,
            current_root_version: (status.current_root_version != 0)
                .then_some(status.current_root_version),
            root_keys: status
                .root_keys
                .into_iter()
                .map(RootKeyInfo::try_from)
                .collect::<Result<_, _>>()?,
            signing_public_key,
            rotate_root_after_wraps: status.rotate_root_after_wraps,
            root_rotation_due: status.root_rotation_due,
            transport: status.transport,
            seal: status.seal,
            seal_identity: (!status.seal_identity.is_empty()).then_some(status.seal_identity),
            seal_message: (!status.seal_message.is_empty()).then_some(status.seal_message),
            approved_builds: status
                .approved_builds
                .iter()
                .map(|m| measurement(m))
                .collect::<Result<_, _>>()?,
            evidence: status.evidence,
            measurement: match status.measurement.len() {
                0 => None,
                _ => Some(measurement(&status.measurement)?),
            },
            attested: status.attested,
            attestation_identity: (!status.attestation_identity.is_empty())
                .then_some(status.attestation_identity),
        })
    }
}

/// A build measurement: 48 bytes.
fn measurement(bytes: &[u8]) -> Result<[u8; 48], Error> {
    bytes.try_into().map_err(|_| {
        Error::Protocol(format!(
            "a build measurement has {} bytes, not 48",
            bytes.len()
        ))
    })
}

impl TryFrom<pb::ListRootKeysResponse> for RootKeys {
    type Error = Error;

    /// Refuses a bad root key version.
    fn try_from(response: pb::ListRootKeysResponse) -> Result<Self, Error> {
        Ok(RootKeys {
            current_version: response.current_version,
            versions: response
                .versions
                .into_iter()
                .map(RootKeyInfo::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<pb::RewrapStatusResponse> for RewrapProgress {
    fn from(response: pb::RewrapStatusResponse) -> Self {
        RewrapProgress {
            target_version: response.target_version,
            finished: response.finished,
            rewrapped: response.rewrapped,
            pending_at_start: response.pending_at_start,
            examined: response.examined,
            unreadable: response.unreadable,
            removed_erased: response.removed_erased,
        }
    }
}

impl From<pb::ReindexStatusResponse> for ReindexProgress {
    fn from(response: pb::ReindexStatusResponse) -> Self {
        ReindexProgress {
            target_version: response.target_version,
            finished: response.finished,
            examined: response.examined,
            reindexed: response.reindexed,
            skipped: response.skipped,
            unreadable: response.unreadable,
            total_at_start: response.total_at_start,
        }
    }
}

impl From<pb::RotateSubjectKeyResponse> for SubjectKeyRotation {
    fn from(response: pb::RotateSubjectKeyResponse) -> Self {
        SubjectKeyRotation {
            new_version: response.new_version,
            records: response.records,
            fields: response.fields,
        }
    }
}

impl TryFrom<pb::ErasureReceipt> for ErasureReceipt {
    type Error = Error;

    /// Refuses a receipt without a valid `erased_at`. The receipt is not
    /// verified here: see [`ErasureReceipt::verify`].
    fn try_from(receipt: pb::ErasureReceipt) -> Result<Self, Error> {
        let erased_at = receipt
            .erased_at
            .ok_or_else(|| Error::Protocol("the erasure receipt lacks erased_at".into()))?
            .try_into()?;
        Ok(ErasureReceipt {
            body: receipt.body,
            signature: receipt.signature,
            public_key: receipt.public_key,
            receipt_id: receipt.receipt_id,
            erased_at,
            region: receipt.region,
            subject_pseudonym: receipt.subject_pseudonym,
            key_versions_destroyed: receipt.key_versions_destroyed,
            records_deleted: receipt.records_deleted,
            shred_bucket: receipt.shred_bucket,
            shred_epoch_destroyed: receipt.shred_epoch_destroyed,
            keys_rewrapped: receipt.keys_rewrapped,
        })
    }
}

impl From<pb::FieldAccess> for FieldAccess {
    fn from(access: pb::FieldAccess) -> Self {
        FieldAccess {
            field: access.field,
            access: access.access,
        }
    }
}

impl From<pb::OperationAccess> for OperationAccess {
    fn from(operation: pb::OperationAccess) -> Self {
        OperationAccess {
            operation: operation.operation,
            fields: operation.fields.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::CheckPolicyResponse> for PolicyCheck {
    fn from(response: pb::CheckPolicyResponse) -> Self {
        PolicyCheck {
            source: response.source,
            roles: response.roles,
            operations: response.operations.into_iter().map(Into::into).collect(),
            rules: response.rules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: Value) {
        let wire = pb::Value::from(&value);
        assert_eq!(Value::try_from(wire.clone()).unwrap(), value);
        // And through the encoded bytes, as the server would see it.
        let bytes = prost::Message::encode_to_vec(&wire);
        let decoded: pb::Value = prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(Value::try_from(decoded).unwrap(), value);
    }

    #[test]
    fn every_value_type_round_trips() {
        round_trip(Value::String(String::new()));
        round_trip(Value::String("Grüße, 世界".into()));
        round_trip(Value::Int64(0));
        round_trip(Value::Int64(i64::MIN));
        round_trip(Value::Int64(i64::MAX));
        round_trip(Value::Double(0.0));
        round_trip(Value::Double(-1.5e300));
        round_trip(Value::Double(f64::INFINITY));
        round_trip(Value::Bool(false));
        round_trip(Value::Bool(true));
        round_trip(Value::Bytes(Vec::new()));
        round_trip(Value::Bytes((0..=255).collect()));
        round_trip(Value::Timestamp(Timestamp::default()));
        round_trip(Value::Timestamp(Timestamp {
            seconds: -2_208_988_800,
            nanos: 999_999_999,
        }));
        round_trip(Value::Timestamp(Timestamp {
            seconds: 253_402_300_799,
            nanos: 1,
        }));
        // NaN is not equal to itself, so check it by hand.
        let wire = pb::Value::from(Value::Double(f64::NAN));
        assert!(matches!(Value::try_from(wire), Ok(Value::Double(x)) if x.is_nan()));
    }

    #[test]
    fn wire_variants_match() {
        use pb::value::Kind;
        let kind = |v: Value| pb::Value::from(v).kind.unwrap();
        assert!(matches!(kind(Value::from("a")), Kind::StringValue(s) if s == "a"));
        assert!(matches!(kind(Value::from(3i64)), Kind::Int64Value(3)));
        assert!(matches!(kind(Value::from(0.5)), Kind::DoubleValue(x) if x == 0.5));
        assert!(matches!(kind(Value::from(true)), Kind::BoolValue(true)));
        assert!(matches!(kind(Value::from(vec![9u8])), Kind::BytesValue(b) if b == [9]));
        assert!(matches!(
            kind(Value::from(Timestamp {
                seconds: 4,
                nanos: 5
            })),
            Kind::TimestampValue(prost_types::Timestamp {
                seconds: 4,
                nanos: 5
            })
        ));
    }

    #[test]
    fn unnormalised_timestamps_are_normalised_on_the_wire() {
        let wire: prost_types::Timestamp = Timestamp {
            seconds: 10,
            nanos: -1,
        }
        .into();
        assert_eq!(
            wire,
            prost_types::Timestamp {
                seconds: 9,
                nanos: 999_999_999
            }
        );
    }

    #[test]
    fn broken_values_from_the_server_are_protocol_errors() {
        assert!(matches!(
            Value::try_from(pb::Value { kind: None }),
            Err(Error::Protocol(_))
        ));
        let bad_ts = pb::Value {
            kind: Some(pb::value::Kind::TimestampValue(prost_types::Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            })),
        };
        assert!(matches!(Value::try_from(bad_ts), Err(Error::Protocol(_))));
        let record = pb::Record {
            collection: "users".into(),
            id: "u1".into(),
            subject_id: "s1".into(),
            fields: [("email".to_owned(), pb::Value { kind: None })].into(),
            redacted_fields: Vec::new(),
            masked_fields: Vec::new(),
        };
        match Record::try_from(record) {
            Err(Error::Protocol(message)) => {
                assert!(message.contains("users/u1"), "{message}");
                assert!(message.contains("email"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn enums_round_trip_and_unspecified_is_refused() {
        for t in FieldType::ALL {
            assert_eq!(FieldType::try_from(pb::FieldType::from(t)).unwrap(), t);
        }
        for c in DataCategory::ALL {
            assert_eq!(
                DataCategory::try_from(pb::DataCategory::from(c)).unwrap(),
                c
            );
        }
        assert!(matches!(
            FieldType::try_from(pb::FieldType::Unspecified),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            DataCategory::try_from(pb::DataCategory::Unspecified),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn collections_round_trip() {
        let collection = Collection::new("users")
            .region("eu")
            .description("People")
            .field(
                FieldSchema::new("email", FieldType::String, DataCategory::Contact)
                    .indexed()
                    .masked(1, 4),
            )
            .field(FieldSchema::new(
                "birth_date",
                FieldType::Timestamp,
                DataCategory::Identity,
            ));
        let wire = pb::Collection::from(&collection);
        assert_eq!(wire.fields[0].r#type, pb::FieldType::String as i32);
        assert_eq!(wire.fields[0].category, pb::DataCategory::Contact as i32);
        assert_eq!(
            wire.fields[0].mask,
            Some(pb::Mask {
                keep_first: 1,
                keep_last: 4
            })
        );
        assert_eq!(wire.fields[1].mask, None);
        assert_eq!(Collection::try_from(wire).unwrap(), collection);
    }

    #[test]
    fn bad_schemas_from_the_server_are_protocol_errors() {
        let field = |r#type: i32, category: i32| pb::Collection {
            name: "users".into(),
            fields: vec![pb::FieldSchema {
                name: "email".into(),
                r#type,
                category,
                indexed: false,
                mask: None,
            }],
            ..Default::default()
        };
        for (t, c) in [(0, 2), (1, 0), (99, 2), (1, 99), (-1, 2)] {
            match Collection::try_from(field(t, c)) {
                Err(Error::Protocol(message)) => {
                    assert!(message.contains("users"), "{message}");
                    assert!(message.contains("email"), "{message}");
                }
                other => panic!("type {t} category {c}: {other:?}"),
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let record = Record::new("users", "u1", "s1")
            .with("email", "a@b.eu")
            .with("age", 40i64)
            .with("score", 0.25)
            .with("active", true)
            .with("photo", vec![1u8, 2, 3])
            .with("birth_date", Timestamp::from_unix_seconds(642_902_400));
        let wire = pb::Record::from(&record);
        assert_eq!(wire.fields.len(), 6);
        assert!(wire.redacted_fields.is_empty() && wire.masked_fields.is_empty());
        assert_eq!(pb::Record::from(record.clone()), wire);
        // Read back with nothing redacted, it is the record written.
        assert_eq!(Record::try_from(wire).unwrap(), record);
    }

    fn read_wire() -> pb::Record {
        pb::Record {
            collection: "users".into(),
            id: "u1".into(),
            subject_id: "s1".into(),
            fields: [
                (
                    "email".to_owned(),
                    pb::Value::from(Value::from("a***@b.eu")),
                ),
                ("name".to_owned(), pb::Value::from(Value::from("Ada"))),
            ]
            .into(),
            redacted_fields: vec!["phone".into(), "birth_date".into(), "phone".into()],
            masked_fields: vec!["email".into()],
        }
    }

    #[test]
    fn redacted_and_masked_fields_are_read() {
        let record = Record::try_from(read_wire()).unwrap();
        assert_eq!(
            record.redacted.iter().collect::<Vec<_>>(),
            ["birth_date", "phone"]
        );
        assert_eq!(record.masked.iter().collect::<Vec<_>>(), ["email"]);
        assert_eq!(record.get("email"), Some(&Value::from("a***@b.eu")));
        assert_eq!(record.get("phone"), None);
        assert_ne!(
            record,
            Record::new("users", "u1", "s1")
                .with("email", "a***@b.eu")
                .with("name", "Ada")
        );
        // Never sent back.
        let wire = pb::Record::from(&record);
        assert!(wire.redacted_fields.is_empty() && wire.masked_fields.is_empty());
        let wire = pb::Record::from(record);
        assert!(wire.redacted_fields.is_empty() && wire.masked_fields.is_empty());
    }

    #[test]
    fn contradictory_redaction_is_a_protocol_error() {
        let mut redacted_with_a_value = read_wire();
        redacted_with_a_value.redacted_fields.push("name".into());
        match Record::try_from(redacted_with_a_value) {
            Err(Error::Protocol(m)) => {
                assert_eq!(
                    m,
                    "record `users/u1` field `name`: marked redacted, yet it has a value"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut masked_without_a_value = read_wire();
        masked_without_a_value.masked_fields.push("phone".into());
        match Record::try_from(masked_without_a_value) {
            Err(Error::Protocol(m)) => {
                assert_eq!(
                    m,
                    "record `users/u1` field `phone`: marked masked, yet it has no value"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn policy_checks() {
        let check = PolicyCheck::from(pb::CheckPolicyResponse {
            source: "/etc/vault/policy.toml".into(),
            roles: vec!["support".into()],
            operations: vec![pb::OperationAccess {
                operation: "read".into(),
                fields: vec![
                    pb::FieldAccess {
                        field: "email".into(),
                        access: "masked".into(),
                    },
                    pb::FieldAccess {
                        field: "country".into(),
                        access: "redacted".into(),
                    },
                ],
            }],
            rules: Vec::new(),
        });
        assert_eq!(
            check,
            PolicyCheck {
                source: "/etc/vault/policy.toml".into(),
                roles: vec!["support".into()],
                operations: vec![OperationAccess {
                    operation: "read".into(),
                    fields: vec![
                        FieldAccess {
                            field: "email".into(),
                            access: "masked".into(),
                        },
                        FieldAccess {
                            field: "country".into(),
                            access: "redacted".into(),
                        },
                    ],
                }],
                rules: Vec::new(),
            }
        );
        let summary = PolicyCheck::from(pb::CheckPolicyResponse {
            source: "built-in role policy".into(),
            roles: vec!["reader".into(), "writer".into()],
            operations: Vec::new(),
            rules: vec!["role reader: read on collections * · every field".into()],
        });
        assert_eq!(summary.roles, ["reader", "writer"]);
        assert!(summary.operations.is_empty());
        assert_eq!(summary.rules.len(), 1);
    }
    #[test]
    fn custody_answers() {
        let init = Initialized::from(pb::InitResponse {
            shares: vec!["vault-share-v1:aa\n".into(), "vault-share-v1:bb".into()],
            threshold: 2,
            region: "eu".into(),
            encrypted_shares: Vec::new(),
        });
        assert_eq!(init.region, "eu");
        assert_eq!(init.threshold, 2);
        let shares: Vec<&str> = init.shares.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(shares, ["vault-share-v1:aa", "vault-share-v1:bb"]);

        let status = SealStatus::try_from(pb::StatusResponse {
            initialized: true,
            sealed: false,
            region: "eu".into(),
            threshold: 2,
            shares: 3,
            progress: 0,
            current_root_version: 2,
            root_keys: vec![
                pb::RootKeyVersion {
                    version: 1,
                    state: pb::KeyState::Retired.into(),
                    current: false,
                    wrapped_subject_keys: 0,
                    wraps: 12,
                },
                pb::RootKeyVersion {
                    version: 2,
                    state: pb::KeyState::Active.into(),
                    current: true,
                    wrapped_subject_keys: 0,
                    wraps: 3,
                },
            ],
            signing_public_key: vec![7; 32],
            rotate_root_after_wraps: 1 << 31,
            root_rotation_due: false,
            transport: "TLS".into(),
            seal: "pkcs11".into(),
            seal_identity: "token".into(),
            seal_message: String::new(),
            approved_builds: vec![vec![1; 48], vec![2; 48]],
            evidence: "self-reported".into(),
            measurement: vec![2; 48],
            attested: false,
            attestation_identity: "root sha256:00".into(),
        })
        .unwrap();
        assert_eq!(status.seal_identity.as_deref(), Some("token"));
        assert_eq!(
            status.attestation_identity.as_deref(),
            Some("root sha256:00")
        );
        assert_eq!(status.seal_message, None);
        assert_eq!(status.measurement_approved(), Some(true));
        // A measurement that is not 48 bytes is a protocol error.
        for bad in [vec![1; 47], vec![]] {
            let r = SealStatus::try_from(pb::StatusResponse {
                approved_builds: vec![bad],
                ..Default::default()
            });
            assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
        }
        assert!(SealStatus::try_from(pb::StatusResponse {
            measurement: vec![1; 49],
            ..Default::default()
        })
        .is_err());
        assert_eq!(status.root_keys[0].wraps, 12);
        assert_eq!(status.rotate_root_after_wraps, 1 << 31);
        assert_eq!(status.transport, "TLS");
        assert_eq!(status.current_root_version, Some(2));
        assert_eq!(status.root_keys[0].state, KeyState::Retired);
        assert!(status.root_keys[1].current);
        assert_eq!(status.signing_public_key, Some([7; 32]));

        let sealed = SealStatus::try_from(pb::StatusResponse {
            initialized: true,
            sealed: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(sealed.current_root_version, None);
        assert_eq!(sealed.signing_public_key, None);
    }

    #[test]
    fn broken_custody_answers_are_protocol_errors() {
        for state in [0, 4, -1] {
            let key = pb::RootKeyVersion {
                version: 3,
                state,
                current: false,
                wrapped_subject_keys: 0,
                wraps: 0,
            };
            match RootKeyInfo::try_from(key) {
                Err(Error::Protocol(message)) => {
                    assert!(message.contains("root key version 3"), "{message}")
                }
                other => panic!("state {state}: {other:?}"),
            }
        }
        let short_key = pb::StatusResponse {
            signing_public_key: vec![1; 31],
            ..Default::default()
        };
        assert!(matches!(
            SealStatus::try_from(short_key),
            Err(Error::Protocol(m)) if m.contains("31 bytes")
        ));
        let no_time = pb::ErasureReceipt::default();
        assert!(matches!(
            ErasureReceipt::try_from(no_time),
            Err(Error::Protocol(m)) if m.contains("erased_at")
        ));
        let bad_time = pb::ErasureReceipt {
            erased_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: -1,
            }),
            ..Default::default()
        };
        assert!(matches!(
            ErasureReceipt::try_from(bad_time),
            Err(Error::Protocol(_))
        ));
        let shredded = ErasureReceipt::try_from(pb::ErasureReceipt {
            erased_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            shred_bucket: 517,
            shred_epoch_destroyed: 3,
            keys_rewrapped: 12,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (
                shredded.shred_bucket,
                shredded.shred_epoch_destroyed,
                shredded.keys_rewrapped
            ),
            (517, 3, 12)
        );
    }
}
