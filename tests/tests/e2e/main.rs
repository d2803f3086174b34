//! End-to-end tests: every test starts real servers on 127.0.0.1:0 over
//! temporary data folders and talks to them through real sockets. One test
//! binary with modules keeps link time down.

#![allow(clippy::unwrap_used)]

mod attestation;
mod audit;
mod bench;
mod binary;
mod client;
mod custody;
mod export;
mod hostile;
mod ids_at_rest;
mod malformed;
mod monitor;
mod policy;
mod prereqs;
mod records;
mod region;
mod reindex;
mod retention;
mod routing;
mod scale_out;
mod seal;
mod search;
mod tamper;
mod tls;
mod vaultctl;
mod vaultctl_custody;
mod vaultctl_rekey;
mod witness;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
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
        retention: None,
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

/// The health status the server at `url` reports for `service` (`""`: the
/// server as a whole).
pub async fn health(url: &str, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}
