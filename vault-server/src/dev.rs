//! Development mode helpers: the seeded example collection and the
//! development principal.

use rand::RngCore;

use crate::engine::{Collection, DataCategory, FieldSchema, FieldType, Mask};
use crate::policy::{Caller, Principal, Role};
use crate::{Engine, Error, Result};

/// The example `users` collection that dev mode seeds.
pub fn users_collection(region: &str) -> Collection {
    let f = |name: &str, field_type, category, mask| FieldSchema {
        name: name.to_owned(),
        field_type,
        category,
        indexed: false,
        mask,
    };
    Collection {
        name: "users".into(),
        region: region.to_owned(),
        description: "Example collection seeded by vault-server --dev".into(),
        retention: None,
        fields: vec![
            f(
                "email",
                FieldType::String,
                DataCategory::Contact,
                Some(Mask {
                    keep_first: 1,
                    keep_last: 0,
                }),
            ),
            f("name", FieldType::String, DataCategory::Identity, None),
            f(
                "phone",
                FieldType::String,
                DataCategory::Contact,
                Some(Mask {
                    keep_first: 0,
                    keep_last: 4,
                }),
            ),
            f(
                "birth_date",
                FieldType::Timestamp,
                DataCategory::Identity,
                None,
            ),
            f("country", FieldType::String, DataCategory::Location, None),
        ],
    }
}

/// Creates the example collection unless it exists.
pub fn seed(engine: &Engine) -> Result<()> {
    let caller = Caller::internal("dev-seed");
    match engine.create_collection(&caller, users_collection(engine.region().as_str())) {
        Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The development principal: every role but custody (reader, writer,
/// admin, auditor, dpo). Custody and data access are separate duties even
/// in development: custody has its own token ([`dev_custodian`]).
pub fn dev_principal() -> Principal {
    Principal {
        name: "dev-root".into(),
        roles: Role::ALL
            .into_iter()
            .filter(|r| *r != Role::Custodian)
            .collect(),
    }
}

/// The development custodian: custody only.
pub fn dev_custodian() -> Principal {
    Principal {
        name: "dev-custodian".into(),
        roles: vec![Role::Custodian],
    }
}

/// A fresh random development token.
pub fn random_token() -> String {
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("dev.{}", hex::encode(b))
}
