//! End-to-end tests: every test starts real servers on 127.0.0.1:0 over
//! temporary data folders and talks to them through real sockets. One test
//! binary with modules keeps link time down.

#![allow(clippy::unwrap_used)]

mod audit;
mod bench;
mod binary;
mod client;
mod custody;
mod hostile;
mod malformed;
mod policy;
mod records;
mod region;
mod tamper;
mod tls;
mod vaultctl;
mod vaultctl_custody;

use vault_client::{Collection, DataCategory, FieldSchema, FieldType, Record, Timestamp};

/// A `users` record of the dev schema.
pub fn user(id: &str, subject: &str) -> Record {
    Record::new("users", id, subject)
        .with("email", format!("{id}@example.eu"))
        .with("name", "Ada Lovelace")
        .with("phone", "+33612345678")
        .with("birth_date", vaultc_ts(-4_917_000_000, 0))
        .with("country", "FR")
}

pub fn vaultc_ts(seconds: i64, nanos: i32) -> vault_client::Value {
    vault_client::Value::Timestamp(Timestamp { seconds, nanos })
}

/// A collection with one field of every type.
pub fn all_types(name: &str) -> Collection {
    let f = |n: &str, t| FieldSchema {
        name: n.into(),
        field_type: t,
        category: DataCategory::Other,
        indexed: false,
        mask: None,
    };
    Collection {
        name: name.into(),
        region: String::new(),
        description: "every value type".into(),
        fields: vec![
            f("s", FieldType::String),
            f("i", FieldType::Int64),
            f("d", FieldType::Double),
            f("b", FieldType::Bool),
            f("y", FieldType::Bytes),
            f("t", FieldType::Timestamp),
        ],
    }
}
